use cuebe::Abstraction;

#[derive(Abstraction)]
pub enum WorkerSpec {
    A,
}

fn main() {}
