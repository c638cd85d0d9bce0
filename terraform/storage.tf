################################################################################
# S3: data (MLWP_STORAGE_ROOT), models (SageMaker job outputs), artifacts (MLflow), logs
# (Airflow task logs), plus the server-access-log bucket of those four.
################################################################################

locals {
  # Data read again by later runs moves to Intelligent-Tiering (no retrieval fee, no guess
  # about access); replaced versions stay for the undo window.
  tiered_lifecycle_rule = {
    id                                     = "intelligent-tiering"
    enabled                                = true
    abort_incomplete_multipart_upload_days = 7
    transition                             = [{ days = 30, storage_class = "INTELLIGENT_TIERING" }]
    noncurrent_version_expiration          = { days = var.noncurrent_version_expiration_days }
  }

  # What each bucket holds and how its objects age.
  buckets = {
    data = {
      purpose        = "datasets, features, captures, SageMaker channels and code (MLWP_STORAGE_ROOT)"
      replicate      = true
      lifecycle_rule = local.tiered_lifecycle_rule
    }
    models = {
      purpose        = "SageMaker training outputs: model.tar.gz and checkpoints"
      replicate      = true
      lifecycle_rule = local.tiered_lifecycle_rule
    }
    artifacts = {
      purpose        = "MLflow artifacts: run files and registered model versions"
      replicate      = true
      lifecycle_rule = local.tiered_lifecycle_rule
    }
    logs = {
      purpose   = "Airflow task logs (remote logging)"
      replicate = false
      # Read rarely, and less as they age.
      lifecycle_rule = {
        id                                     = "age-task-logs"
        enabled                                = true
        abort_incomplete_multipart_upload_days = 7
        transition = [
          { days = 30, storage_class = "STANDARD_IA" },
          { days = 90, storage_class = "GLACIER_IR" },
        ]
        expiration                    = { days = var.task_log_retention_days }
        noncurrent_version_expiration = { days = 30 }
      }
    }
  }

  bucket_names = {
    for key, _ in local.buckets : key => "${var.name}-${key}-${local.account_id}"
  }
  access_log_bucket_name = "${var.name}-s3-access-${local.account_id}"

  bucket_arns = {
    for key, name in local.bucket_names : key => "arn:${local.partition}:s3:::${name}"
  }

  replicated_buckets = {
    for key, bucket in local.buckets : key => bucket if var.replication.enabled && bucket.replicate
  }
}

module "bucket" {
  source  = "terraform-aws-modules/s3-bucket/aws"
  version = "~> 5.15"

  for_each = local.buckets

  bucket = local.bucket_names[each.key]

  # Objects belong to the bucket owner; ACLs are off.
  control_object_ownership = true
  object_ownership         = "BucketOwnerEnforced"

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true

  versioning = {
    enabled = true
  }

  server_side_encryption_configuration = {
    rule = {
      apply_server_side_encryption_by_default = {
        sse_algorithm     = "aws:kms"
        kms_master_key_id = aws_kms_key.this.arn
      }
      # One data key per bucket instead of one KMS call per object: cheaper, same protection.
      bucket_key_enabled = true
    }
  }

  attach_deny_insecure_transport_policy = true
  attach_require_latest_tls_policy      = true

  logging = {
    target_bucket = module.access_log_bucket.s3_bucket_id
    target_prefix = "${each.key}/"
  }

  # No filter: the rule applies to every object (the module then writes an empty filter).
  lifecycle_rule = [each.value.lifecycle_rule]

  # Through JSON: the two branches of a conditional must have one type, and "no replication"
  # is an empty object to the module.
  replication_configuration = jsondecode(contains(keys(local.replicated_buckets), each.key) ? jsonencode({
    role = module.replication_role[0].arn
    rules = [
      {
        id                        = "disaster-recovery"
        status                    = "Enabled"
        delete_marker_replication = true
        filter                    = { prefix = "" }
        source_selection_criteria = {
          sse_kms_encrypted_objects = { enabled = true }
        }
        destination = {
          bucket             = var.replication.destination_bucket_arns[each.key]
          storage_class      = var.replication.storage_class
          replica_kms_key_id = var.replication.destination_kms_key_arn
        }
      },
    ]
  }) : "{}")

  tags = merge(local.tags, { "mlwp:bucket" = each.key, "mlwp:purpose" = each.value.purpose })
}

# Server access logs: S3 delivers them only to a bucket encrypted with SSE-S3 (AES256), not
# SSE-KMS, which is why this bucket is the one exception to the deployment key.
module "access_log_bucket" {
  source  = "terraform-aws-modules/s3-bucket/aws"
  version = "~> 5.15"

  bucket = local.access_log_bucket_name

  control_object_ownership = true
  object_ownership         = "BucketOwnerEnforced"

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true

  versioning = {
    enabled = true
  }

  server_side_encryption_configuration = {
    rule = {
      apply_server_side_encryption_by_default = {
        sse_algorithm = "AES256"
      }
    }
  }

  attach_access_log_delivery_policy          = true
  access_log_delivery_policy_source_accounts = [local.account_id]
  access_log_delivery_policy_source_buckets  = values(local.bucket_arns)

  attach_deny_insecure_transport_policy = true
  attach_require_latest_tls_policy      = true

  lifecycle_rule = [
    {
      id                                     = "expire-access-logs"
      enabled                                = true
      abort_incomplete_multipart_upload_days = 7
      expiration                             = { days = var.access_log_retention_days }
      noncurrent_version_expiration          = { days = 7 }
    },
  ]

  tags = merge(local.tags, { "mlwp:bucket" = "s3-access", "mlwp:purpose" = "S3 server access logs" })
}
