//! Compiles the KServe v2 / Triton gRPC protocol and TF Serving's with protox (pure Rust; no
//! `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    println!("cargo:rerun-if-changed=proto/model_config.proto");
    let fds = protox::compile(["grpc_service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .bytes(".inference.InferTensorContents.bytes_contents")
        .compile_fds(fds)?;
    // TF Serving's API (its own listener, --tfserving-grpc-port).
    println!("cargo:rerun-if-changed=proto/tensorflow/tensor.proto");
    println!("cargo:rerun-if-changed=proto/tensorflow_serving/apis.proto");
    let fds = protox::compile(["tensorflow_serving/apis.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .bytes(".tensorflow.TensorProto.tensor_content")
        .bytes(".tensorflow.TensorProto.string_val")
        .compile_fds(fds)?;
    Ok(())
}
