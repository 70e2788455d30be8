//! `mobilellm`: the command-line tool. With no subcommand it runs the demo.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use mobilellm_kernels::{ops, reference, DType, Gpu, Result, Tensor};

#[derive(Parser)]
#[command(name = "mobilellm", version, about = "MobileLLM-class models on wgpu compute kernels")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Show the device and run a kernel against its CPU twin (the default).
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo) {
        Command::Demo => demo(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<()> {
    let gpu = Gpu::new()?;
    println!("device: {}", gpu.describe());
    let (rows, cols) = (64usize, 576usize);
    let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    let w: Vec<f32> = (0..cols).map(|i| 0.5 + (i % 13) as f32 / 13.0).collect();
    let x_gpu = Tensor::from_slice(&gpu, &[rows, cols], &x)?;
    let w_gpu = Tensor::from_slice(&gpu, &[cols], &w)?;
    let y_gpu = Tensor::zeros(&gpu, DType::F32, &[rows, cols])?;
    let norm = ops::rms_norm::rms_norm(&gpu, &x_gpu, &w_gpu, &y_gpu, 1e-5)?;
    ops::run(&gpu, &[&norm])?; // warm-up: pipeline compile and first touch
    let runs = 20;
    let start = Instant::now();
    for _ in 0..runs {
        ops::run(&gpu, &[&norm])?;
    }
    let per_call = start.elapsed().as_secs_f64() / runs as f64;
    let y = y_gpu.read::<f32>(&gpu)?;
    let expected = reference::rms_norm(&x, &w, 1e-5);
    let max_err = y.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    println!(
        "rms_norm {rows}x{cols}: max |gpu - cpu| = {max_err:.2e}, {:.1} us per submit (wall, incl. submit+wait)",
        per_call * 1e6
    );
    Ok(())
}
