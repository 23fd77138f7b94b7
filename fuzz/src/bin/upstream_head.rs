//! Fuzz target: `switchyard_worker::fuzzing::upstream_head` (see there for what it checks).
fn main() {
    afl::fuzz!(|data: &[u8]| switchyard_worker::fuzzing::upstream_head(data));
}
