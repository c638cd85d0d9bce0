terraform {
  # 1.11: write-only attributes, which the RDS module (v7) requires.
  required_version = ">= 1.11.1"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.42: the floor of terraform-aws-modules/s3-bucket 5.x; below 7 so a new major is a
      # deliberate upgrade.
      version = ">= 6.42, < 7.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6, < 4.0"
    }
  }
}
