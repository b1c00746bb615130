//! Links the plugin as a position-dependent executable (`-no-pie`).
//!
//! The plugin is one short process per CNI call, so its start is part of every ADD and DEL.
//! As a position-independent executable it carried ~27,500 relative relocations that the
//! dynamic loader applied at every start: 380 k of the 806 k instructions of
//! `CNI_COMMAND=VERSION`, and the dirty pages they make. Linked at a fixed address it has
//! none (benches/RESULTS.md has the counts). What this gives up is the randomised address
//! of the plugin's own code (shared libraries, stack and heap are still randomised); the
//! plugin reads only its runtime's request, its own root-owned files and its datastore.
fn main() {
    println!("cargo:rustc-link-arg-bin=ipam-cni=-no-pie");
}
