# Production: three zones, a NAT gateway per zone, Multi-AZ PostgreSQL with deletion protection
# and 30 days of backups, Redis with two replicas, a spot node group for Celery workers, and the
# data, models and artifacts buckets replicated to the disaster-recovery region.

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "mlwp:environment" = "production"
    }
  }
}

module "mlwp" {
  source = "../.."

  name = "mlwp-production"

  vpc_cidr           = "10.40.0.0/16"
  availability_zones = var.availability_zones

  cluster_endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs
  cluster_admin_principal_arns         = var.cluster_admin_principal_arns
  image_push_principal_arns            = var.image_push_principal_arns

  node_groups = {
    platform = {
      instance_types = ["m7i.xlarge"]
      min_size       = 3
      max_size       = 6
      desired_size   = 3
    }
    # Celery workers (queue "default" and the ML tasks): interruptible, so spot, and tainted
    # so only pods that tolerate it (the chart's workers) land there.
    workers = {
      instance_types = ["m7i.2xlarge", "m6i.2xlarge", "m7a.2xlarge"]
      capacity_type  = "SPOT"
      min_size       = 1
      max_size       = 10
      desired_size   = 2
      labels         = { "mlwp.io/pool" = "workers" }
      taints = {
        workers = { key = "mlwp.io/pool", value = "workers", effect = "NO_SCHEDULE" }
      }
    }
  }

  database = {
    instance_class           = "db.m7g.xlarge"
    allocated_storage_gb     = 100
    max_allocated_storage_gb = 1000
    backup_retention_days    = 30
  }

  redis = {
    node_type          = "cache.m7g.large"
    num_cache_clusters = 3
  }

  replication = {
    enabled = var.dr_replication.enabled
    destination_bucket_arns = {
      data      = var.dr_replication.data_bucket_arn
      models    = var.dr_replication.models_bucket_arn
      artifacts = var.dr_replication.artifacts_bucket_arn
    }
    destination_kms_key_arn = var.dr_replication.kms_key_arn
  }

  sagemaker_vpc_access = true

  log_retention_in_days   = 365
  task_log_retention_days = 730

  tags = {
    environment = "production"
  }
}
