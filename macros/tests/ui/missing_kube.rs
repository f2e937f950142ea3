use cuebe::Abstraction;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Abstraction, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[abstraction(module = "../../cue/platform", package = "./webservice")]
pub struct WorkerSpec {
    pub image: String,
}

fn main() {}
