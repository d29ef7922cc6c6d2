//! The `pyro` binary: everything is in the library (`pyro_cli`), which the Python package's
//! `pyro` command runs too.

fn main() -> std::process::ExitCode {
    pyro_cli::main_from(std::env::args_os().collect(), None)
}
