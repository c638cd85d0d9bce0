# mlwp on AWS: the network, the EKS cluster the Helm charts deploy to, PostgreSQL, Redis, the S3
# buckets, the ECR repositories, one IAM role per workload and the CloudWatch log groups.
#
# One file per concern: network.tf, eks.tf, database.tf, redis.tf, storage.tf, registry.tf,
# iam.tf, logs.tf. This file holds what they share: names, tags and the customer-managed KMS
# key that encrypts every store (S3, RDS, ElastiCache, Secrets Manager, CloudWatch Logs, ECR;
# the nodes' root volumes use aws/ebs, see eks.tf).

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Used only when availability_zones is empty (a quick start); the examples name their zones, which is what pins the subnets
  # Opt-in zones (Local Zones, Wavelength) lack most of the services used here.
  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.region

  # Named zones pin the subnets; otherwise the first zones of the region, which could shift
  # if AWS added a zone that sorts first.
  azs = length(var.availability_zones) > 0 ? var.availability_zones : slice(
    data.aws_availability_zones.available.names, 0, var.availability_zone_count
  )

  tags = merge(var.tags, {
    "mlwp:deployment" = var.name
    "mlwp:managed-by" = "terraform"
  })
}

################################################################################
# KMS: one key per deployment
################################################################################

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy: kms:* for the account root is AWS's default key policy, which hands the key's administration to IAM policies
  #checkov:skip=CKV_AWS_111:A key policy: Resource "*" in a key policy is the key itself, not every resource
  #checkov:skip=CKV_AWS_356:A key policy: Resource "*" in a key policy is the key itself, not every resource
  # The account's default key policy: IAM policies (not this document) decide who may use or
  # administer the key. Without it the key can become unmanageable.
  statement {
    sid       = "AccountAdministersTheKeyThroughIam"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy, "*" is this key
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # CloudWatch Logs encrypts the log groups below with this key; it is not an IAM principal of
  # the account, so the key policy must name it, limited to this account's log groups.
  statement {
    sid = "CloudWatchLogsEncryptsThisDeploymentsLogGroups"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"] # in a key policy, "*" is this key
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "mlwp ${var.name}: S3, RDS, ElastiCache, Secrets Manager, CloudWatch Logs, ECR"
  deletion_window_in_days = var.kms_deletion_window_in_days
  enable_key_rotation     = true
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}
