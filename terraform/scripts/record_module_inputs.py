"""Record the input variables of the terraform-aws-modules versions terraform/ pins.

No module can be downloaded where the tests run, so the tests compare every argument given to
a registry module with this record (terraform/module-inputs.json) instead. Run it when a pin
changes, against git clones of the module repositories:

    python terraform/scripts/record_module_inputs.py --repos /path/to/clones

where /path/to/clones holds terraform-aws-<name> (a plain `git clone`) or
terraform-aws-modules+terraform-aws-<name>/repo (a bare snapshot), and commit the JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import hcl2
from hcl2 import SerializationOptions

# registry source -> (repository, tag checked, folder of the module inside it)
PINS = {
    "terraform-aws-modules/vpc/aws": ("terraform-aws-vpc", "v6.6.0", ""),
    "terraform-aws-modules/eks/aws": ("terraform-aws-eks", "v21.19.0", ""),
    "terraform-aws-modules/rds/aws": ("terraform-aws-rds", "v7.2.0", ""),
    "terraform-aws-modules/elasticache/aws": ("terraform-aws-elasticache", "v1.10.3", ""),
    "terraform-aws-modules/s3-bucket/aws": ("terraform-aws-s3-bucket", "v5.15.4", ""),
    "terraform-aws-modules/ecr/aws": ("terraform-aws-ecr", "v3.2.0", ""),
    "terraform-aws-modules/iam/aws//modules/iam-role": (
        "terraform-aws-iam",
        "v6.5.0",
        "modules/iam-role/",
    ),
}
OUTPUT = Path(__file__).resolve().parents[1] / "module-inputs.json"


def _git_dir(repos: Path, repository: str) -> Path:
    for candidate in (
        repos / repository,
        repos / f"terraform-aws-modules+{repository}" / "repo",
    ):
        if candidate.exists():
            return candidate
    raise SystemExit(f"no clone of {repository} under {repos}")


def _inputs(git_dir: Path, tag: str, folder: str) -> tuple[list[str], list[str]]:
    text = subprocess.run(
        ["git", "-C", str(git_dir), "show", f"{tag}:{folder}variables.tf"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    options = SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
    document = hcl2.loads(text, serialization_options=options)
    names, required = [], []
    for entry in document.get("variable", []):
        for label, body in entry.items():
            name = label.strip('"')
            names.append(name)
            if "default" not in body:
                required.append(name)
    return sorted(names), sorted(required)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=Path, required=True, help="folder of module clones")
    args = parser.parse_args()
    modules = {}
    for source, (repository, tag, folder) in PINS.items():
        names, required = _inputs(_git_dir(args.repos, repository), tag, folder)
        modules[source] = {"version": tag, "inputs": names, "required": required}
    document = {
        "about": "Input variables of the terraform-aws-modules versions terraform/ was checked "
        "against; written by terraform/scripts/record_module_inputs.py.",
        "modules": modules,
    }
    OUTPUT.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
