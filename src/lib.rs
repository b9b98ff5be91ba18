//! postflight proves that a Kubernetes node running Calico is really back after an OS
//! update rebooted it: Ready on a new boot, calico-node Ready and not crash-looping, the
//! host state Calico needs intact, and pods on it reaching pods on every other node.
//!
//! Data flows one way: [`inventory`] → [`gate`] (which orders actions against the
//! cluster through [`cluster`] and on the hosts through [`host`]: SSH, or a
//! [`node_shell`] pod) → verdicts with
//! evidence from [`checks`] and root-cause hints from [`diagnose`], whose fix commands
//! are data that [`fix`] renders → [`report`].
//! [`rbac`] holds every permission postflight uses: the manifest it prints and the
//! access review a run makes before it acts. [`ansible`] writes an inventory from an
//! Ansible one.

pub mod ansible;
pub mod build_info;
pub mod checks;
pub mod cluster;
pub mod diagnose;
pub mod expectations;
pub mod fix;
pub mod gate;
pub mod host;
pub mod hostile;
pub mod inventory;
pub mod kind;
pub mod local_file;
pub mod node_shell;
pub mod rbac;
pub mod report;
