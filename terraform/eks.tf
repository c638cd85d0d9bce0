################################################################################
# EKS: the cluster the mlwp charts deploy to
################################################################################

module "eks" {
  source  = "terraform-aws-modules/eks/aws"
  version = "~> 21.19"

  name               = var.name
  kubernetes_version = var.kubernetes_version

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  # The API endpoint is private unless a list of networks is given (a CI runner, an office).
  endpoint_private_access      = true
  endpoint_public_access       = length(var.cluster_endpoint_public_access_cidrs) > 0
  endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs

  # Access entries only (no aws-auth ConfigMap); whoever runs terraform administers the cluster.
  authentication_mode                      = "API"
  enable_cluster_creator_admin_permissions = true
  access_entries = {
    for index, arn in var.cluster_admin_principal_arns : "admin-${index}" => {
      principal_arn = arn
      policy_associations = {
        admin = {
          policy_arn   = "arn:${local.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
          access_scope = { type = "cluster" }
        }
      }
    }
  }

  # IRSA needs the cluster's OIDC provider; EKS Pod Identity needs the agent add-on.
  enable_irsa = var.workload_identity == "irsa"
  addons = merge(
    {
      coredns    = {}
      kube-proxy = {}
      vpc-cni    = { before_compute = true }
    },
    var.workload_identity == "pod_identity" ? {
      eks-pod-identity-agent = { before_compute = true }
    } : {},
  )

  enabled_log_types                      = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
  cloudwatch_log_group_retention_in_days = var.log_retention_in_days
  cloudwatch_log_group_kms_key_id        = aws_kms_key.this.arn

  eks_managed_node_groups = {
    for group_name, group in var.node_groups : group_name => {
      ami_type       = group.ami_type
      instance_types = group.instance_types
      capacity_type  = group.capacity_type
      min_size       = group.min_size
      max_size       = group.max_size
      desired_size   = group.desired_size
      labels         = group.labels
      taints         = group.taints
      # Encrypted with the account's aws/ebs key: a customer key would have to name the
      # Auto Scaling service-linked role in its policy, which may not exist yet in a new
      # account. The root volume holds images and pods' scratch space, no platform data.
      block_device_mappings = {
        root = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size           = group.disk_size_gb
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }
      # IMDSv2 only, one hop: pods cannot borrow the node's role through the metadata service.
      metadata_options = {
        http_endpoint               = "enabled"
        http_tokens                 = "required"
        http_put_response_hop_limit = 1
      }
    }
  }

  tags = local.tags
}

################################################################################
# EKS Pod Identity: bind each mlwp service account to its role (see iam.tf)
################################################################################

resource "aws_eks_pod_identity_association" "this" {
  for_each = var.workload_identity == "pod_identity" ? local.service_account_roles : {}

  cluster_name    = module.eks.cluster_name
  namespace       = each.value.namespace
  service_account = each.value.service_account
  role_arn        = module.workload_role[each.value.role].arn

  tags = local.tags
}
