//! Compiles LND's service definitions into tonic *server* stubs for the fake LND used in tests. Messages are
//! not generated again: they are `lnd_grpc_rust`'s prost types, so client and fake share one wire format.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc ships inside the protoc-bin-vendored crate: no system protoc needed.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .generate_default_stubs(true)
        .extern_path(".lnrpc", "::lnd_grpc_rust::lnrpc")
        .extern_path(".routerrpc", "::lnd_grpc_rust::routerrpc")
        .compile_protos(
            &["proto/lightning.proto", "proto/routerrpc/router.proto"],
            &["proto"],
        )?;
    Ok(())
}
