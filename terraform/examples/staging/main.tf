# Staging: production's shape (Multi-AZ PostgreSQL and Redis, private endpoints, the same IAM)
# at a smaller size, with one NAT gateway and deletion protection off so it can be torn down.

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "mlwp:environment" = "staging"
    }
  }
}

module "mlwp" {
  source = "../.."

  name = "mlwp-staging"

  vpc_cidr           = "10.41.0.0/16"
  availability_zones = var.availability_zones
  single_nat_gateway = true

  cluster_endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs
  cluster_admin_principal_arns         = var.cluster_admin_principal_arns
  image_push_principal_arns            = var.image_push_principal_arns

  node_groups = {
    platform = {
      instance_types = ["m7i.large"]
      min_size       = 2
      max_size       = 4
      desired_size   = 2
    }
  }

  database = {
    instance_class        = "db.t4g.medium"
    allocated_storage_gb  = 20
    backup_retention_days = 7
    deletion_protection   = false
  }

  redis = {
    node_type = "cache.t4g.small"
  }

  log_retention_in_days   = 30
  task_log_retention_days = 90
  images_to_keep          = 20

  tags = {
    environment = "staging"
  }
}
