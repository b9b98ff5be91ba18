//! The inventory parser on arbitrary text: it may refuse anything, with a located error,
//! but never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postflight::inventory::Inventory;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(inventory) = Inventory::parse(&text, Path::new("/fuzz/inventory.yaml")) {
        // A valid inventory is usable: every node has an SSH target.
        for node in &inventory.nodes {
            let _ = inventory.ssh_target(node);
        }
    }
});
