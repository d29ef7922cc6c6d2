//! `pyro_mcp._native`: the Rust side of the Python package.
//!
//! Python calls go through the MCP tools without a transport ([`pyro_mcp::PyroTools::call_direct`]),
//! so the SDK takes the same parameters and returns the same objects as the MCP server and
//! `pyro … --json`; the few SDK calls that are not tools (environment inspect, pull, prune) call
//! the library here. A call runs on this module's tokio runtime while Python waits without the
//! GIL, a little at a time, so that the Python side can notice Ctrl-C and cancel the call (see
//! `python/pyro_mcp/_core.py`). `cli_main` is the `pyro` command itself.

use std::mem::ManuallyDrop;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

/// One session with the library: its runtime, the facade and the full set of tools.
#[pyclass(frozen, module = "pyro_mcp._native")]
struct Client {
    /// Dropped by hand: see `Drop`.
    runtime: ManuallyDrop<tokio::runtime::Runtime>,
    pyro: ManuallyDrop<pyro::Pyro>,
    tools: ManuallyDrop<pyro_mcp::PyroTools>,
    /// The process that made it.
    pid: u32,
}

impl Drop for Client {
    fn drop(&mut self) {
        // After a fork (Python's multiprocessing forks by default), the child holds a copy of
        // a runtime whose worker threads exist only in the parent: shutting it down would wait
        // on threads that are not there. The child leaves it alone (the Python side opens a
        // fresh client there).
        if std::process::id() != self.pid {
            return;
        }
        // SAFETY: each field is dropped once, here, and never used again.
        unsafe {
            ManuallyDrop::drop(&mut self.tools);
            ManuallyDrop::drop(&mut self.pyro);
            ManuallyDrop::drop(&mut self.runtime);
        }
    }
}

/// What a finished call left: `(ok, JSON)`; the JSON is the result, or `{kind, message, hint}`.
type Outcome = (bool, String);

/// A call in progress.
#[pyclass(frozen, module = "pyro_mcp._native")]
struct Call {
    cancel: CancellationToken,
    done: Arc<(Mutex<Option<Outcome>>, Condvar)>,
}

fn runtime_error(e: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

fn error_json(e: pyro_mcp::render::ToolError) -> String {
    json!({"kind": e.kind, "message": e.message, "hint": e.hint}).to_string()
}

#[pymethods]
impl Client {
    /// Opens pyro's state. `home` and `cache` replace `PYRO_HOME` and `PYRO_CACHE_DIR`.
    #[new]
    #[pyo3(signature = (home=None, cache=None))]
    fn new(py: Python<'_>, home: Option<PathBuf>, cache: Option<PathBuf>) -> PyResult<Client> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pyro")
            .enable_all()
            .build()
            .map_err(runtime_error)?;
        let mut config = pyro::Config::from_env();
        if let Some(h) = home {
            config.paths.home = h;
        }
        if let Some(c) = cache {
            config.paths.cache = c;
        }
        let pyro = py
            .detach(|| runtime.block_on(pyro::Pyro::open(config)))
            .map_err(|e| {
                PyRuntimeError::new_err(error_json(pyro_mcp::render::ToolError::from(e)))
            })?;
        // The SDK is the caller's own program: host paths are its own to name (the Python side
        // makes them absolute against its working directory at call time).
        let roots = pyro_mcp::AllowedRoots::new(&[PathBuf::from("/")]).map_err(runtime_error)?;
        let tools = pyro_mcp::PyroTools::new(pyro.clone(), pyro_mcp::Profile::WorkspaceFull, roots);
        Ok(Client {
            runtime: ManuallyDrop::new(runtime),
            pyro: ManuallyDrop::new(pyro),
            tools: ManuallyDrop::new(tools),
            pid: std::process::id(),
        })
    }

    /// Starts `op` (a tool name, or `env_inspect`/`env_pull`/`env_prune`) with `args`, a JSON
    /// object.
    fn start(&self, op: String, args: &str) -> PyResult<Call> {
        let args: Map<String, Value> = serde_json::from_str(args)
            .map_err(|e| PyValueError::new_err(format!("arguments are not a JSON object: {e}")))?;
        let cancel = CancellationToken::new();
        let done = Arc::new((Mutex::new(None), Condvar::new()));
        let (tools, pyro, ct, slot) = (
            (*self.tools).clone(),
            (*self.pyro).clone(),
            cancel.clone(),
            done.clone(),
        );
        self.runtime.spawn(async move {
            let r = match op.as_str() {
                "env_inspect" | "env_pull" | "env_prune" => env_op(&pyro, &op, &args).await,
                _ => tools.call_direct(&op, args, ct).await,
            };
            let outcome = match r {
                Ok(v) => (true, v.to_string()),
                Err(e) => (false, error_json(e)),
            };
            let (lock, cv) = &*slot;
            if let Ok(mut s) = lock.lock() {
                *s = Some(outcome);
            }
            cv.notify_all();
        });
        Ok(Call { cancel, done })
    }

    /// The names of the tools `start` takes.
    fn tool_names(&self) -> Vec<String> {
        self.tools.tool_names()
    }
}

/// The environment calls that are not MCP tools; results as `pyro env … --json` prints them.
async fn env_op(
    pyro: &pyro::Pyro,
    op: &str,
    args: &Map<String, Value>,
) -> Result<Value, pyro_mcp::render::ToolError> {
    use pyro_mcp::render::ToolError;
    let name = || {
        args.get("environment")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ToolError::invalid(format!("{op}: environment is required"), None))
    };
    let value = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| ToolError::invalid(format!("{op}: cannot render the result: {e}"), None))
    };
    match op {
        "env_inspect" => value(serde_json::to_value(pyro.env_inspect(&name()?)?)),
        "env_prune" => value(serde_json::to_value(pyro.env_prune()?)),
        _ => {
            let r = pyro
                .env_pull_or_build(&name()?, None, false, Box::new(|_| {}), Box::new(|_| {}))
                .await?;
            value(serde_json::to_value(r))
        }
    }
}

#[pymethods]
impl Call {
    /// Waits up to `timeout` seconds (`None`: until done) without holding the GIL; the outcome,
    /// or `None` if the call is still running.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Outcome>> {
        let slot = self.done.clone();
        py.detach(move || {
            let (lock, cv) = &*slot;
            let guard = lock.lock().map_err(runtime_error)?;
            let guard = match timeout {
                None => cv
                    .wait_while(guard, |s| s.is_none())
                    .map_err(runtime_error)?,
                Some(t) => {
                    let t = Duration::try_from_secs_f64(t.max(0.0)).unwrap_or(Duration::MAX);
                    cv.wait_timeout_while(guard, t, |s| s.is_none())
                        .map_err(runtime_error)?
                        .0
                }
            };
            Ok(guard.clone())
        })
    }

    /// Cancels the call: a run's sandbox is removed, an exec's command stopped. `wait` then
    /// returns once that is done.
    fn cancel(&self) {
        self.cancel.cancel();
    }
}

/// Runs the `pyro` command line on `argv` (the program name first); returns its exit status.
/// `self_command` is the console script, which `pyro host connect` writes into clients'
/// configurations.
#[pyfunction]
#[pyo3(signature = (argv, self_command=None))]
fn cli_main(py: Python<'_>, argv: Vec<String>, self_command: Option<PathBuf>) -> i32 {
    // The interpreter's SIGINT handler only sets a flag for Python code that will not run
    // until the CLI returns; the CLI handles Ctrl-C itself where it cleans up, and is ended by
    // it everywhere else, as the binary is.
    // SAFETY: resetting a signal's disposition to the default is async-signal-safe and has no
    // memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
    let code =
        py.detach(|| pyro_cli::main_from(argv.into_iter().map(Into::into).collect(), self_command));
    // ExitCode hides its number (ExitCode::exit_process is unstable): find it by comparison.
    (0..=255u8)
        .find(|n| std::process::ExitCode::from(*n) == code)
        .map_or(1, i32::from)
}

/// pyro's native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<Call>()?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
