//! The `trellis-cni` plugin executable (all logic in the `trellis-cni` crate).

fn main() {
    trellis_cni::main()
}
