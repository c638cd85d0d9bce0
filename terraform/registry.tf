################################################################################
# ECR: the platform image (Airflow + mlwp) and the serving image
################################################################################

locals {
  repositories = toset(["platform", "serving"])
}

module "repository" {
  source  = "terraform-aws-modules/ecr/aws"
  version = "~> 3.2"

  for_each = local.repositories

  repository_name = "${var.name}/${each.key}"

  # A tag names one image forever: a deploy of `1.4.2` is what was tested as `1.4.2`.
  repository_image_tag_mutability = "IMMUTABLE"
  repository_image_scan_on_push   = true
  repository_encryption_type      = "KMS"
  repository_kms_key              = aws_kms_key.this.arn
  repository_force_delete         = false

  # Nodes pull with their node role (AmazonEC2ContainerRegistryReadOnly, from the EKS module);
  # SageMaker pulls a custom training image with the execution role; CI pushes.
  repository_read_access_arns       = [module.sagemaker_execution_role.arn]
  repository_read_write_access_arns = var.image_push_principal_arns

  create_lifecycle_policy = true
  repository_lifecycle_policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Untagged layers of interrupted pushes"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = 7
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the newest ${var.images_to_keep} images (rollback range)"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.images_to_keep
        }
        action = { type = "expire" }
      },
    ]
  })

  tags = local.tags
}
