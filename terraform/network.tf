################################################################################
# VPC: public subnets for load balancers and NAT, private subnets for the nodes and pods,
# isolated subnets for PostgreSQL and Redis (no route to the internet).
################################################################################

locals {
  # Four /20 (or larger, with a bigger VPC) blocks per AZ role, derived from the VPC CIDR so
  # that one variable sizes the network: private subnets get the big ranges because every
  # pod takes a VPC address with the VPC CNI.
  private_subnets     = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets      = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, 48 + i)]
  database_subnets    = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, 56 + i)]
  elasticache_subnets = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, 64 + i)]
}

module "vpc" {
  source  = "terraform-aws-modules/vpc/aws"
  version = "~> 6.6"

  name = var.name
  cidr = var.vpc_cidr
  azs  = local.azs

  private_subnets     = local.private_subnets
  public_subnets      = local.public_subnets
  database_subnets    = local.database_subnets
  elasticache_subnets = local.elasticache_subnets

  create_database_subnet_group    = true
  create_elasticache_subnet_group = true

  enable_nat_gateway = true
  # One NAT gateway per AZ survives the loss of a zone; one in total costs a third.
  single_nat_gateway     = var.single_nat_gateway
  one_nat_gateway_per_az = !var.single_nat_gateway

  enable_dns_hostnames = true
  enable_dns_support   = true

  # Nothing may be attached to the default security group by accident.
  manage_default_security_group  = true
  default_security_group_ingress = []
  default_security_group_egress  = []

  enable_flow_log                                 = true
  create_flow_log_cloudwatch_log_group            = true
  create_flow_log_cloudwatch_iam_role             = true
  flow_log_max_aggregation_interval               = 60
  flow_log_cloudwatch_log_group_retention_in_days = var.log_retention_in_days
  flow_log_cloudwatch_log_group_kms_key_id        = aws_kms_key.this.arn

  # Where the AWS Load Balancer Controller places internet-facing and internal load balancers.
  public_subnet_tags = {
    "kubernetes.io/role/elb" = 1
  }
  private_subnet_tags = {
    "kubernetes.io/role/internal-elb" = 1
  }

  tags = local.tags
}

# S3 traffic from the nodes and SageMaker stays on the AWS network and skips the NAT gateways'
# per-GB charge.
resource "aws_vpc_endpoint" "s3" {
  vpc_id            = module.vpc.vpc_id
  service_name      = "com.amazonaws.${local.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = module.vpc.private_route_table_ids
  tags              = merge(local.tags, { Name = "${var.name}-s3" })
}

# Training jobs inside the VPC (sagemaker_vpc_access): HTTPS out only (S3 through the endpoint,
# ECR, CloudWatch and the SageMaker API through NAT); distributed training talks to itself.
resource "aws_security_group" "sagemaker" {
  #checkov:skip=CKV2_AWS_5:Attached by SageMaker to the training jobs of definitions that set sagemaker.security_group_ids, outside Terraform
  count = var.sagemaker_vpc_access ? 1 : 0

  name_prefix = "${var.name}-sagemaker-"
  description = "SageMaker training jobs of mlwp ${var.name}"
  vpc_id      = module.vpc.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-sagemaker" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "sagemaker_https" {
  count = var.sagemaker_vpc_access ? 1 : 0

  security_group_id = aws_security_group.sagemaker[0].id
  description       = "HTTPS to AWS APIs (S3, ECR, CloudWatch, SageMaker)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "sagemaker_between_instances" {
  count = var.sagemaker_vpc_access ? 1 : 0

  security_group_id            = aws_security_group.sagemaker[0].id
  description                  = "Distributed training between the job's instances"
  ip_protocol                  = "-1"
  referenced_security_group_id = aws_security_group.sagemaker[0].id
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "sagemaker_between_instances" {
  count = var.sagemaker_vpc_access ? 1 : 0

  security_group_id            = aws_security_group.sagemaker[0].id
  description                  = "Distributed training between the job's instances"
  ip_protocol                  = "-1"
  referenced_security_group_id = aws_security_group.sagemaker[0].id
  tags                         = local.tags
}
