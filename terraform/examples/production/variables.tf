variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"
}

variable "availability_zones" {
  description = "Availability zones of the region, by name (they pin the subnets)."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Networks allowed to reach the Kubernetes API from the internet (the CI runners, an office); empty keeps it private."
  type        = list(string)
  default     = []
}

variable "cluster_admin_principal_arns" {
  description = "IAM roles granted cluster-admin, e.g. the CI/CD deploy role."
  type        = list(string)
  default     = []
}

variable "image_push_principal_arns" {
  description = "IAM roles allowed to push images to ECR (the CI/CD role)."
  type        = list(string)
  default     = []
}

variable "dr_replication" {
  description = "Disaster recovery: versioned buckets (data, models, artifacts) and a KMS key in another region that the buckets replicate to; leave enabled = false until they exist."
  type = object({
    enabled              = bool
    data_bucket_arn      = optional(string)
    models_bucket_arn    = optional(string)
    artifacts_bucket_arn = optional(string)
    kms_key_arn          = optional(string)
  })
  default = {
    enabled = false
  }
}
