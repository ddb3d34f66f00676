//! `thaw-jail __jail --config <json> -- <program> [args...]`: the jail on its
//! own, the same entry point the `thaw` binary dispatches `__jail` to.

fn main() {
    thaw_jail::run_from_args(std::env::args_os().skip(1).collect())
}
