use cuebe::Abstraction;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema)]
pub struct MyStatus {}

#[derive(CustomResource, Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Worker", namespaced, status = "MyStatus")]
#[abstraction(module = "../../cue/platform", package = "./webservice")]
pub struct WorkerSpec {
    pub image: String,
}

fn main() {}
