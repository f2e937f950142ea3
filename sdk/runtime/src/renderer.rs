//! The renderer as the runtime calls it: the async [`Renderer`] trait over the core's
//! [`CueRenderer`], which evaluates CUE on a blocking thread.
//!
//! Everything else here is the core's [`cuebe_core::render`], re-exported.
use std::sync::Arc;

use cuebe_core::plan::Plan;
pub use cuebe_core::render::*;

/// Turns an instance into a validated [`Plan`] of its Graph. Implementations must be pure: the
/// same input gives the same graph.
///
/// ```no_run
/// # async fn demo(renderer: &dyn cuebe::renderer::Renderer) -> Result<(), cuebe::renderer::RenderError> {
/// use cuebe::renderer::{RenderInput};
/// let plan = renderer
///     .render(&RenderInput {
///         instance: cuebe::instance::Instance { name: "web".into(), namespace: "apps".into(), ..Default::default() },
///         spec: serde_json::json!({"image": "registry.example.com/web:1"}),
///         ..Default::default()
///     })
///     .await?;
/// println!("{} nodes", plan.graph().nodes.len());
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
pub trait Renderer: Send + Sync {
    /// Renders one instance.
    async fn render(&self, input: &RenderInput) -> Result<Arc<Plan>, RenderError>;

    /// How the renderer's render cache has done so far, if it has one (reported as metrics).
    fn cache_stats(&self) -> Option<RenderCacheStats> {
        None
    }
}

#[async_trait::async_trait]
impl Renderer for CueRenderer {
    async fn render(&self, input: &RenderInput) -> Result<Arc<Plan>, RenderError> {
        // A cache hit never leaves this thread; CUE runs on a blocking thread.
        let span = tracing::Span::current();
        if let Some(hit) = self.cached(input)? {
            span.record("cuebe.render.cached", true);
            return Ok(hit);
        }
        span.record("cuebe.render.cached", false);
        let renderer = self.clone();
        let input = input.clone();
        // Waiting for a free evaluator happens here, as a task, rather than on a blocking
        // thread parked in the module's pool: an operator starting over 10,000 instances would
        // otherwise hold hundreds of threads that only wait.
        let _permit = render_permits()
            .acquire()
            .await
            .map_err(|e| RenderError::Task(Arc::new(e)))?;
        // The evaluation's own logs belong to the render span of the pass that asked for it.
        tokio::task::spawn_blocking(move || span.in_scope(|| renderer.render_blocking(&input)))
            .await
            .map_err(|e| RenderError::Task(Arc::new(e)))?
    }

    fn cache_stats(&self) -> Option<RenderCacheStats> {
        Some(CueRenderer::cache_stats(self))
    }
}

/// CUE evaluations that may run at once in this process: one per core (CPU-bound work gains
/// nothing from more), whatever the number of modules and their evaluator pools.
fn render_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        )
    })
}
