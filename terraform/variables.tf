################################################################################
# Deployment
################################################################################

variable "name" {
  description = "Name of the deployment (e.g. mlwp-staging): prefixes every resource, names the EKS cluster, the RDS instance and the buckets."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,22}[a-z0-9]$", var.name))
    error_message = "name must be 4 to 24 characters of lowercase letters, digits and hyphens, starting with a letter (it becomes part of S3 bucket and RDS names)."
  }
}

variable "tags" {
  description = "Tags added to every resource (cost centre, owner, environment)."
  type        = map(string)
  default     = {}
}

variable "kms_deletion_window_in_days" {
  description = "Days a scheduled deletion of the deployment's KMS key waits (7 to 30); every store is encrypted with it."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_in_days >= 7 && var.kms_deletion_window_in_days <= 30
    error_message = "kms_deletion_window_in_days must be between 7 and 30."
  }
}

################################################################################
# Network
################################################################################

variable "vpc_cidr" {
  description = "CIDR block of the VPC; /16 recommended: every pod takes a VPC address with the VPC CNI."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 18
    error_message = "vpc_cidr must be an IPv4 CIDR block of size /18 or larger (e.g. 10.40.0.0/16)."
  }
}

variable "availability_zones" {
  description = "Availability zones to use by name (e.g. [\"eu-west-1a\", \"eu-west-1b\", \"eu-west-1c\"]); naming them pins the subnets. Empty: the region's first availability_zone_count zones."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.availability_zones) == 0 || contains([2, 3], length(var.availability_zones))
    error_message = "availability_zones must name 2 or 3 zones, or be empty."
  }
}

variable "availability_zone_count" {
  description = "Availability zones used (2 or 3): subnets, NAT gateways, the RDS standby and the Redis replica spread over them."
  type        = number
  default     = 3

  validation {
    condition     = contains([2, 3], var.availability_zone_count)
    error_message = "availability_zone_count must be 2 or 3."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for the whole VPC (cheaper; outbound traffic stops if its zone fails) instead of one per availability zone."
  type        = bool
  default     = false
}

################################################################################
# EKS
################################################################################

variable "kubernetes_version" {
  description = "Kubernetes version of the EKS control plane and managed node groups."
  type        = string
  default     = "1.34"
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Networks allowed to reach the Kubernetes API from the internet; empty keeps the endpoint private (reach it from the VPC, a VPN or a bastion)."
  type        = list(string)
  default     = []
}

variable "cluster_admin_principal_arns" {
  description = "IAM roles or users granted cluster-admin through EKS access entries (besides whoever runs terraform), e.g. the CI/CD deploy role."
  type        = list(string)
  default     = []
}

variable "workload_identity" {
  description = "How pods get their IAM role: pod_identity (EKS Pod Identity associations, no service-account annotation) or irsa (IAM roles for service accounts: annotate each service account with its role ARN)."
  type        = string
  default     = "pod_identity"

  validation {
    condition     = contains(["pod_identity", "irsa"], var.workload_identity)
    error_message = "workload_identity must be pod_identity or irsa."
  }
}

variable "node_groups" {
  description = "EKS managed node groups by name. Defaults: one on-demand group for the Airflow components, MLflow, serving and the Celery workers."
  type = map(object({
    instance_types = list(string)
    ami_type       = optional(string, "AL2023_x86_64_STANDARD")
    capacity_type  = optional(string, "ON_DEMAND")
    min_size       = number
    max_size       = number
    desired_size   = number
    disk_size_gb   = optional(number, 100)
    labels         = optional(map(string), {})
    taints = optional(map(object({
      key    = string
      value  = optional(string)
      effect = string
    })), {})
  }))
  default = {
    platform = {
      instance_types = ["m7i.xlarge"]
      min_size       = 3
      max_size       = 6
      desired_size   = 3
    }
  }

  validation {
    condition     = alltrue([for group in values(var.node_groups) : group.min_size <= group.desired_size && group.desired_size <= group.max_size])
    error_message = "node_groups: each group needs min_size <= desired_size <= max_size."
  }
  validation {
    condition     = alltrue([for group in values(var.node_groups) : contains(["ON_DEMAND", "SPOT"], group.capacity_type)])
    error_message = "node_groups: capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "service_accounts" {
  description = "Kubernetes service accounts bound to each workload role (namespace and name); they must match the names set in the Helm values (see README)."
  type = map(list(object({
    namespace = string
    name      = string
  })))
  default = {
    airflow_worker = [
      { namespace = "mlwp", name = "mlwp-airflow-worker" },
      { namespace = "mlwp", name = "mlwp-airflow-triggerer" },
    ]
    airflow_core = [
      { namespace = "mlwp", name = "mlwp-airflow-scheduler" },
      { namespace = "mlwp", name = "mlwp-airflow-api-server" },
      { namespace = "mlwp", name = "mlwp-airflow-dag-processor" },
    ]
    mlflow      = [{ namespace = "mlwp", name = "mlwp-mlflow" }]
    serving     = [{ namespace = "mlwp", name = "mlwp-serving" }]
    log_shipper = [{ namespace = "amazon-cloudwatch", name = "fluent-bit" }]
  }

  validation {
    condition     = toset(keys(var.service_accounts)) == toset(["airflow_worker", "airflow_core", "mlflow", "serving", "log_shipper"])
    error_message = "service_accounts must have exactly the keys airflow_worker, airflow_core, mlflow, serving and log_shipper."
  }
  validation {
    condition     = alltrue([for accounts in values(var.service_accounts) : length(accounts) > 0])
    error_message = "service_accounts: every role needs at least one service account."
  }
}

variable "airflow_secrets_backend" {
  description = "Let the Airflow roles read connections and variables from Secrets Manager under mlwp/connections/ and mlwp/variables/ (MLWP_SECRETS_MANAGER_REGION): the charts read the aws_default connection from there (docs/deploy.md)."
  type        = bool
  default     = true
}

################################################################################
# PostgreSQL and Redis
################################################################################

variable "database" {
  description = "RDS PostgreSQL of Airflow and MLflow: version, size, Multi-AZ, backups, deletion protection."
  type = object({
    engine_version           = optional(string, "17")
    instance_class           = optional(string, "db.m7g.large")
    allocated_storage_gb     = optional(number, 50)
    max_allocated_storage_gb = optional(number, 500)
    multi_az                 = optional(bool, true)
    backup_retention_days    = optional(number, 14)
    deletion_protection      = optional(bool, true)
  })
  default = {}

  validation {
    condition     = var.database.backup_retention_days >= 1 && var.database.backup_retention_days <= 35
    error_message = "database.backup_retention_days must be between 1 and 35 (RDS limits; 0 would switch backups off)."
  }
}

variable "redis_auth_token_version" {
  description = "Bump to generate a new Redis AUTH token (then restart the clients; see README)."
  type        = number
  default     = 1
}

variable "redis" {
  description = "ElastiCache Redis: version, node type, nodes (2 or more: a replica in another zone with automatic failover), snapshot retention."
  type = object({
    engine_version          = optional(string, "7.1")
    node_type               = optional(string, "cache.m7g.large")
    num_cache_clusters      = optional(number, 2)
    snapshot_retention_days = optional(number, 7)
  })
  default = {}

  validation {
    condition     = var.redis.num_cache_clusters >= 1 && var.redis.num_cache_clusters <= 6
    error_message = "redis.num_cache_clusters must be between 1 and 6 (2 or more for Multi-AZ)."
  }
}

################################################################################
# Storage, images and logs
################################################################################

variable "replication" {
  description = "Replication of the data, models and artifacts buckets to buckets in another region for disaster recovery; create those buckets (versioned) and their KMS key first, e.g. with this module in that region."
  type = object({
    enabled                 = optional(bool, false)
    destination_bucket_arns = optional(map(string), {})
    destination_kms_key_arn = optional(string)
    storage_class           = optional(string, "STANDARD_IA")
  })
  default = {}

  validation {
    condition = !var.replication.enabled || (
      toset(keys(var.replication.destination_bucket_arns)) == toset(["data", "models", "artifacts"])
      && var.replication.destination_kms_key_arn != null
    )
    error_message = "replication: when enabled, give destination_bucket_arns for data, models and artifacts, and destination_kms_key_arn."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days a replaced or deleted object version of the data, models and artifacts buckets is kept (the undo window)."
  type        = number
  default     = 90
}

variable "task_log_retention_days" {
  description = "Days Airflow task logs are kept in the logs bucket (moved to cheaper classes after 30 and 90 days)."
  type        = number
  default     = 365
}

variable "access_log_retention_days" {
  description = "Days S3 server access logs are kept."
  type        = number
  default     = 90
}

variable "log_retention_in_days" {
  description = "Retention of the CloudWatch log groups (pods, EKS control plane, RDS, VPC flow logs); one of CloudWatch's allowed values."
  type        = number
  default     = 90

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_in_days)
    error_message = "log_retention_in_days must be one of CloudWatch's values: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "image_push_principal_arns" {
  description = "IAM roles allowed to push to the ECR repositories (the CI/CD role)."
  type        = list(string)
  default     = []
}

variable "images_to_keep" {
  description = "Images kept per ECR repository (the rollback range); older ones expire."
  type        = number
  default     = 50
}

variable "sagemaker_vpc_access" {
  description = "Grant the SageMaker execution role the EC2 network-interface permissions needed to train inside the VPC (sagemaker.subnets in a definition; use private_subnet_ids and sagemaker_security_group_id)."
  type        = bool
  default     = false
}
