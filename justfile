# Developer recipes. Each is a thin wrapper, so the scripts work without just.

fmt:
    cargo fmt --all

clippy:
    cargo clippy --workspace --all-targets -- -D warnings

test:
    scripts/test

bench *ARGS:
    scripts/bench {{ARGS}}

demo:
    scripts/demo
