################################################################################
# IAM: one role per workload, each granted what that workload's code calls and nothing more.
#
# The statements live in the `*_permissions` locals below so that tests/terraform reads them:
# it checks them against the AWS calls recorded while the real SageMaker code paths run on
# moto, and refuses any "*" action or resource that is not listed there with its reason.
################################################################################

locals {
  kms_key_arn  = aws_kms_key.this.arn
  s3_via       = "s3.${local.region}.amazonaws.com"
  task_log_key = "airflow" # the prefix of remote task logs in the logs bucket

  sagemaker_arn_prefix = "arn:${local.partition}:sagemaker:${local.region}:${local.account_id}"
  # mlwp names every job mlwp-<project>-<task>-... and every batch-transform model
  # mlwp-<project>-<model>-v<version>-<archive sha> (mlwp.training.sagemaker.job_name).
  sagemaker_job_arns = [
    "${local.sagemaker_arn_prefix}:training-job/mlwp-*",
    "${local.sagemaker_arn_prefix}:hyper-parameter-tuning-job/mlwp-*",
    "${local.sagemaker_arn_prefix}:transform-job/mlwp-*",
  ]
  sagemaker_model_arns              = ["${local.sagemaker_arn_prefix}:model/mlwp-*"]
  sagemaker_log_group_arn           = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/sagemaker/TrainingJobs"
  sagemaker_transform_log_group_arn = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/sagemaker/TransformJobs"

  # Use of the deployment key, only through S3 (SSE-KMS with bucket keys).
  s3_kms_statement = {
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [local.kms_key_arn]
    condition = [{ test = "StringEquals", variable = "kms:ViaService", values = [local.s3_via] }]
  }

  # Airflow workers and the triggerer: tasks read and write datasets, stage SageMaker
  # channels and code, submit and watch SageMaker jobs, fetch model.tar.gz, write task logs.
  airflow_worker_permissions = {
    DataBucketList = {
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arns.data]
    }
    DataBucketObjects = {
      # DeleteObject: storage writes land under a temporary key, then move (copy + delete).
      actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
      resources = ["${local.bucket_arns.data}/*"]
    }
    ModelsBucketList = {
      # A batch transform's collect task lists the job's output; without ListBucket a missing
      # model.tar.gz would also read as 403 instead of 404 (the error naming the wrong cause).
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arns.models]
    }
    ModelsBucketRead = {
      actions   = ["s3:GetObject"]
      resources = ["${local.bucket_arns.models}/*"]
    }
    TaskLogsList = {
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arns.logs]
    }
    TaskLogsObjects = {
      actions   = ["s3:GetObject", "s3:PutObject"]
      resources = ["${local.bucket_arns.logs}/${local.task_log_key}/*"]
    }
    BucketKey = local.s3_kms_statement
    SageMakerJobs = {
      actions = [
        "sagemaker:AddTags",
        "sagemaker:CreateHyperParameterTuningJob",
        "sagemaker:CreateTrainingJob",
        "sagemaker:CreateTransformJob",
        "sagemaker:DescribeHyperParameterTuningJob",
        "sagemaker:DescribeTrainingJob",
        "sagemaker:DescribeTransformJob",
        "sagemaker:ListTrainingJobsForHyperParameterTuningJob",
        "sagemaker:StopHyperParameterTuningJob",
        "sagemaker:StopTrainingJob",
      ]
      resources = local.sagemaker_job_arns
    }
    SageMakerModels = {
      # batch_predict backend: sagemaker: the request task's model (CreateModel, tagged; its
      # execution role is passed by PassSageMakerExecutionRole), looked up first by the
      # provider's transform operator (DescribeModel) and described again for its result.
      actions   = ["sagemaker:AddTags", "sagemaker:CreateModel", "sagemaker:DescribeModel"]
      resources = local.sagemaker_model_arns
    }
    TrainingJobLogs = {
      # The training operator copies the job's CloudWatch log into the task log (print_log).
      actions   = ["logs:DescribeLogStreams", "logs:GetLogEvents"]
      resources = ["${local.sagemaker_log_group_arn}:*"]
    }
    PassSageMakerExecutionRole = {
      actions   = ["iam:PassRole"]
      resources = [module.sagemaker_execution_role.arn]
      condition = [{ test = "StringEquals", variable = "iam:PassedToService", values = ["sagemaker.amazonaws.com"] }]
    }
  }

  # Scheduler, api-server and dag-processor: the api-server shows task logs from S3; the
  # scheduler and dag-processor upload their own.
  airflow_core_permissions = {
    TaskLogsList = {
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arns.logs]
    }
    TaskLogsObjects = {
      actions   = ["s3:GetObject", "s3:PutObject"]
      resources = ["${local.bucket_arns.logs}/${local.task_log_key}/*"]
    }
    BucketKey = local.s3_kms_statement
  }

  # Airflow's Secrets Manager backend (MLWP_SECRETS_MANAGER_REGION), when switched on: reads
  # connections and variables under mlwp/.
  airflow_secrets_backend_permissions = {
    AirflowSecretsBackend = {
      actions = ["secretsmanager:GetSecretValue"]
      resources = [
        "arn:${local.partition}:secretsmanager:${local.region}:${local.account_id}:secret:mlwp/connections/*",
        "arn:${local.partition}:secretsmanager:${local.region}:${local.account_id}:secret:mlwp/variables/*",
      ]
    }
  }

  # MLflow serves artifacts itself (--artifacts-destination): only it reaches the bucket;
  # clients (workers, serving) go through its HTTP API.
  mlflow_permissions = {
    ArtifactsList = {
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arns.artifacts]
    }
    ArtifactsObjects = {
      actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
      resources = ["${local.bucket_arns.artifacts}/*"]
    }
    BucketKey = local.s3_kms_statement
  }

  # Serving: prediction capture and POST /v1/models/{model}/feedback add Parquet parts under
  # <storage root>/monitoring/capture/ and .../labels/, where the monitor task reads them
  # (docs/monitoring.md). It reads models through MLflow's HTTP API and keeps its state in
  # PostgreSQL and Redis, so this is all it may do on AWS: no read of captures, labels or
  # datasets, no delete, no other prefix.
  serving_permissions = {
    # s3fs probes the bucket (HeadBucket) before each batch's first part: that is ListBucket
    # on the bucket, which no prefix condition can narrow (HeadBucket carries no prefix).
    DataBucketProbe = {
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arns.data]
    }
    WriteCapturesAndLabels = {
      actions = ["s3:PutObject"]
      # under the storage root, the data bucket's root (output storage_root), as
      # mlwp.monitoring.capture.kind_uri lays them out
      resources = [
        "${local.bucket_arns.data}/monitoring/capture/*",
        "${local.bucket_arns.data}/monitoring/labels/*",
      ]
    }
    BucketKey = local.s3_kms_statement
  }

  # Fluent Bit: writes the pods' logs into the deployment's log groups.
  log_shipper_permissions = {
    ShipPodLogs = {
      actions   = ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
      resources = [for group in aws_cloudwatch_log_group.this : "${group.arn}:*"]
    }
  }

  # The SageMaker execution role: the training container reads its channels and code from the
  # data bucket, writes model.tar.gz (and checkpoints) to the models bucket, logs and reports
  # metrics, and pulls its image. A batch transform job reads the model archive, the manifest
  # and the dataset partitions it lists from the data bucket, and writes its output under
  # the models bucket's <project>/sagemaker/<job>/output/ (WriteModelsAndCheckpoints).
  sagemaker_execution_permissions = {
    ListChannels = {
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arns.data]
      condition = [{ test = "StringLike", variable = "s3:prefix", values = ["*/sagemaker/*"] }]
    }
    ReadChannelsAndCode = {
      actions = ["s3:GetObject"]
      resources = [
        "${local.bucket_arns.data}/*/sagemaker/*/input/*",
        "${local.bucket_arns.data}/*/code/*",
      ]
    }
    ReadTransformInputs = {
      actions = ["s3:GetObject"]
      resources = [
        "${local.bucket_arns.data}/*/sagemaker/models/*", # model.tar.gz, by its sha256
        "${local.bucket_arns.data}/*/sagemaker/*/input.manifest",
        "${local.bucket_arns.data}/*/datasets/*", # the partitions the manifest lists
      ]
    }
    ModelsBucketList = {
      # Checkpoint sync lists what an interrupted (spot) job left.
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arns.models]
    }
    WriteModelsAndCheckpoints = {
      actions   = ["s3:GetObject", "s3:PutObject"]
      resources = ["${local.bucket_arns.models}/*/sagemaker/*"]
    }
    BucketKey = local.s3_kms_statement
    TrainingLogs = {
      actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
      resources = [local.sagemaker_log_group_arn, "${local.sagemaker_log_group_arn}:*"]
    }
    TransformLogs = {
      actions   = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
      resources = [local.sagemaker_transform_log_group_arn, "${local.sagemaker_transform_log_group_arn}:*"]
    }
    TrainingMetrics = {
      actions   = ["cloudwatch:PutMetricData"]
      resources = ["*"] # PutMetricData has no resource type; the namespace condition scopes it
      condition = [{ test = "StringEquals", variable = "cloudwatch:namespace", values = ["/aws/sagemaker/TrainingJobs"] }]
    }
    RegistryLogin = {
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"] # GetAuthorizationToken has no resource type
    }
    PullTrainingImage = {
      actions = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
      resources = [
        # mlwp's own images, and the AWS-owned XGBoost framework image (its account differs
        # per region, see mlwp.training.sagemaker.xgboost_image_uri).
        "arn:${local.partition}:ecr:${local.region}:${local.account_id}:repository/${var.name}/*",
        "arn:${local.partition}:ecr:${local.region}:*:repository/sagemaker-xgboost",
      ]
    }
  }

  # Training inside the VPC (sagemaker.subnets in a definition): SageMaker creates ENIs with
  # the execution role. EC2's Describe* and network-interface actions have no resource scope.
  sagemaker_vpc_permissions = {
    TrainInVpc = {
      actions = [
        "ec2:CreateNetworkInterface",
        "ec2:CreateNetworkInterfacePermission",
        "ec2:DeleteNetworkInterface",
        "ec2:DeleteNetworkInterfacePermission",
        "ec2:DescribeDhcpOptions",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeSubnets",
        "ec2:DescribeVpcs",
      ]
      resources = ["*"] # see above: these EC2 actions support no resource-level scoping
      condition = [{ test = "StringEquals", variable = "aws:RequestedRegion", values = [local.region] }]
    }
  }

  workload_roles = {
    airflow_worker = {
      description = "Airflow workers and triggerer of mlwp ${var.name}"
      permissions = merge(
        local.airflow_worker_permissions,
        var.airflow_secrets_backend ? local.airflow_secrets_backend_permissions : {},
      )
    }
    airflow_core = {
      description = "Airflow scheduler, api-server and dag-processor of mlwp ${var.name}"
      permissions = merge(
        local.airflow_core_permissions,
        var.airflow_secrets_backend ? local.airflow_secrets_backend_permissions : {},
      )
    }
    mlflow = {
      description = "MLflow tracking server of mlwp ${var.name}"
      permissions = local.mlflow_permissions
    }
    serving = {
      description = "mlwp serving of ${var.name}"
      permissions = local.serving_permissions
    }
    log_shipper = {
      description = "Fluent Bit shipping the pods' logs of mlwp ${var.name} to CloudWatch"
      permissions = local.log_shipper_permissions
    }
  }

  # "<role>/<namespace>/<service account>" => the binding, for Pod Identity associations.
  service_account_roles = merge([
    for role, accounts in var.service_accounts : {
      for account in accounts : "${role}/${account.namespace}/${account.name}" => {
        role            = role
        namespace       = account.namespace
        service_account = account.name
      }
    }
  ]...)
}

module "workload_role" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role"
  version = "~> 6.5"

  for_each = local.workload_roles

  name            = "${var.name}-${replace(each.key, "_", "-")}"
  use_name_prefix = false
  description     = each.value.description

  # EKS Pod Identity: the EKS service assumes the role for the associated service accounts;
  # the session tags it sets pin the cluster, namespace and service account.
  trust_policy_permissions = var.workload_identity == "pod_identity" ? {
    EksPodIdentity = {
      actions = ["sts:AssumeRole", "sts:TagSession"]
      principals = [{
        type        = "Service"
        identifiers = ["pods.eks.amazonaws.com"]
      }]
      condition = [
        { test = "StringEquals", variable = "aws:SourceAccount", values = [local.account_id] },
        { test = "StringEquals", variable = "aws:RequestTag/eks-cluster-name", values = [var.name] },
        {
          test     = "StringEquals"
          variable = "aws:RequestTag/kubernetes-namespace"
          values   = distinct([for account in var.service_accounts[each.key] : account.namespace])
        },
        {
          test     = "StringEquals"
          variable = "aws:RequestTag/kubernetes-service-account"
          values   = [for account in var.service_accounts[each.key] : account.name]
        },
      ]
    }
  } : null

  # IRSA: the cluster's OIDC provider vouches for exactly these service accounts.
  enable_oidc        = var.workload_identity == "irsa"
  oidc_provider_urls = var.workload_identity == "irsa" ? [module.eks.oidc_provider] : []
  oidc_subjects = [
    for account in var.service_accounts[each.key] : "system:serviceaccount:${account.namespace}:${account.name}"
  ]
  oidc_audiences = ["sts.amazonaws.com"]

  create_inline_policy      = length(each.value.permissions) > 0
  inline_policy_permissions = each.value.permissions

  tags = local.tags
}

module "sagemaker_execution_role" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role"
  version = "~> 6.5"

  name            = "${var.name}-sagemaker-execution"
  use_name_prefix = false
  description     = "SageMaker training, tuning and batch transform jobs of mlwp ${var.name}"

  trust_policy_permissions = {
    SageMakerOfThisAccount = {
      actions = ["sts:AssumeRole"]
      principals = [{
        type        = "Service"
        identifiers = ["sagemaker.amazonaws.com"]
      }]
      # Confused-deputy guard: only SageMaker acting for this account's jobs.
      condition = [
        { test = "StringEquals", variable = "aws:SourceAccount", values = [local.account_id] },
        { test = "ArnLike", variable = "aws:SourceArn", values = ["${local.sagemaker_arn_prefix}:*"] },
      ]
    }
  }

  create_inline_policy = true
  inline_policy_permissions = merge(
    local.sagemaker_execution_permissions,
    var.sagemaker_vpc_access ? local.sagemaker_vpc_permissions : {},
  )

  tags = local.tags
}

################################################################################
# S3 replication (disaster recovery), when switched on
################################################################################

module "replication_role" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role"
  version = "~> 6.5"

  count = var.replication.enabled ? 1 : 0

  name            = "${var.name}-s3-replication"
  use_name_prefix = false
  description     = "S3 replication of mlwp ${var.name} to the disaster-recovery region"

  trust_policy_permissions = {
    S3 = {
      actions = ["sts:AssumeRole"]
      principals = [{
        type        = "Service"
        identifiers = ["s3.amazonaws.com"]
      }]
      condition = [{ test = "StringEquals", variable = "aws:SourceAccount", values = [local.account_id] }]
    }
  }

  create_inline_policy = true
  inline_policy_permissions = {
    ReadSourceConfiguration = {
      actions   = ["s3:GetReplicationConfiguration", "s3:ListBucket"]
      resources = [for key, _ in local.replicated_buckets : local.bucket_arns[key]]
    }
    ReadSourceVersions = {
      actions   = ["s3:GetObjectVersionAcl", "s3:GetObjectVersionForReplication", "s3:GetObjectVersionTagging"]
      resources = [for key, _ in local.replicated_buckets : "${local.bucket_arns[key]}/*"]
    }
    WriteReplicas = {
      actions   = ["s3:ReplicateDelete", "s3:ReplicateObject", "s3:ReplicateTags"]
      resources = [for key, _ in local.replicated_buckets : "${var.replication.destination_bucket_arns[key]}/*"]
    }
    DecryptSource = {
      actions   = ["kms:Decrypt"]
      resources = [local.kms_key_arn]
      condition = [{ test = "StringEquals", variable = "kms:ViaService", values = [local.s3_via] }]
    }
    EncryptReplicas = {
      actions   = ["kms:Encrypt", "kms:GenerateDataKey"]
      resources = [var.replication.destination_kms_key_arn]
    }
  }

  tags = local.tags
}
