//! The compiler as the runtime calls it: the async [`Compiler`] trait over the core's
//! [`CueCompiler`], which evaluates CUE on a blocking thread.
//!
//! Everything else here is the core's [`cuebe_core::compile`], re-exported.
use std::sync::Arc;

pub use cuebe_core::compile::*;
use cuebe_core::plan::Plan;

/// Turns an instance into a validated [`Plan`] of its Graph. Implementations must be pure: the
/// same input gives the same graph.
///
/// ```no_run
/// # async fn demo(compiler: &dyn cuebe::compiler::Compiler) -> Result<(), cuebe::compiler::CompileError> {
/// use cuebe::compiler::{CompileInput, InstanceMeta};
/// let plan = compiler
///     .compile(&CompileInput {
///         instance: InstanceMeta { name: "web".into(), namespace: "apps".into(), ..Default::default() },
///         spec: serde_json::json!({"image": "registry.example.com/web:1"}),
///         ..Default::default()
///     })
///     .await?;
/// println!("{} nodes", plan.graph().nodes.len());
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
pub trait Compiler: Send + Sync {
    /// Compiles one instance.
    async fn compile(&self, input: &CompileInput) -> Result<Arc<Plan>, CompileError>;

    /// How the compiler's render cache has done so far, if it has one (reported as metrics).
    fn cache_stats(&self) -> Option<RenderCacheStats> {
        None
    }
}

#[async_trait::async_trait]
impl Compiler for CueCompiler {
    async fn compile(&self, input: &CompileInput) -> Result<Arc<Plan>, CompileError> {
        // A cache hit never leaves this thread; CUE runs on a blocking thread.
        if let Some(hit) = self.cached(input)? {
            return Ok(hit);
        }
        let compiler = self.clone();
        let input = input.clone();
        tokio::task::spawn_blocking(move || compiler.compile_blocking(&input))
            .await
            .map_err(|e| CompileError::Task(Arc::new(e)))?
    }

    fn cache_stats(&self) -> Option<RenderCacheStats> {
        Some(CueCompiler::cache_stats(self))
    }
}
