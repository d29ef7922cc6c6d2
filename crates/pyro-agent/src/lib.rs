//! The pyro guest agent: PID 1 inside every sandbox, whatever isolates it.
//!
//! In a VM it first builds its root filesystem ([`vm`]). The binary (`bin/main.rs`) runs the init steps in [`init`] when it is PID 1, starts the
//! [`reaper`], and then serves host requests with [`server`]. Each connection carries one call
//! (see `pyro-protocol`), and connections are served concurrently, so a long exec never blocks
//! another call.

pub mod archive;
pub mod exec;
pub mod files;
pub mod init;
pub mod net;
pub mod reaper;
pub mod server;
pub mod services;
pub mod shells;
pub mod user;
pub mod vm_root;
