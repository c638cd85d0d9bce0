variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"
}

variable "availability_zones" {
  description = "Availability zones of the region, by name (they pin the subnets)."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b"]
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
