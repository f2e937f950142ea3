use cuebe::Abstraction;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Worker", namespaced, status = "cuebe::status::AbstractionStatus")]
#[abstraction(module = "../../../../cue/platform", package = "./websevice")]
pub struct WorkerSpec {
    pub image: String,
}

fn main() {}
