//! berth-shim: the per-pod shim. The shim issue implements the containerd shim v2
//! protocol here; until then the binary only reports that it is not ready.
fn main() {
    eprintln!("berth-shim: not implemented yet (see the shim issue)");
    std::process::exit(2);
}
