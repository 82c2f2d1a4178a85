//! `berth bench scheduler`: places a stream of mixed requests (CPU, whole-GPU, GPU-memory slice)
//! on a synthetic cluster of mixed nodes with the real scheduler, one placement after another on
//! one core, and prints the rate and how full the GPUs were when the first GPU request was
//! refused.

use std::process::ExitCode;
use std::time::Instant;

use berth_core::schedule::{
    Cluster, GpuAssignment, GpuDemand, GpuState, NodeState, Options, Policy, Request, Resources,
    ServerType,
};
use berth_core::seeded::SeededRandom;
use clap::Args;

const GIB: u64 = 1 << 30;

/// Options of `berth bench scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerBenchArgs {
    /// Nodes in the synthetic cluster (40 % GPU servers with 8 GPUs, 50 % CPU, 10 % edge).
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Requests to place (50 % CPU, 25 % GPU slices, 25 % whole GPUs).
    #[arg(long, default_value_t = 100_000)]
    services: usize,
    /// `spread` or `binpack`.
    #[arg(long, default_value = "binpack")]
    policy: String,
    /// Feasible nodes compared per placement (0: all).
    #[arg(long, default_value_t = 16)]
    candidates: usize,
    /// Seed of the cluster, the requests and the sampling.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn synthetic_node(id: i64, random: &mut SeededRandom) -> NodeState {
    let kind = random.below(10);
    let (server_type, cores, memory_gib, gpus) = match kind {
        0..=3 => {
            let gpu_gib = if random.below(2) == 0 { 80 } else { 24 };
            (ServerType::Gpu, 64, 512, vec![gpu_gib; 8])
        }
        4..=8 => (ServerType::Cpu, 32, 128, Vec::new()),
        _ => (ServerType::Edge, 8, 16, Vec::new()),
    };
    NodeState {
        id,
        name: format!("sim-{id}"),
        server_type,
        enabled: true,
        listed: true,
        healthy: true,
        priority: 100 + (random.below(2) as i64) * 10,
        weight: 50 + random.below(100) as u32,
        labels: Default::default(),
        capacity: Resources {
            cpu_millis: cores * 1000,
            memory_bytes: memory_gib * GIB,
            disk_bytes: 4000 * GIB,
        },
        allocated: Resources::default(),
        max_containers: 100,
        containers: 0,
        gpus: gpus
            .into_iter()
            .enumerate()
            .map(|(index, memory)| GpuState {
                index: index as u32,
                memory_bytes: memory * GIB,
                whole_tenant: false,
                sliced_bytes: 0,
                observed_free_bytes: None,
            })
            .collect(),
    }
}

fn synthetic_request(random: &mut SeededRandom) -> Request {
    let (cores_half, memory_gib, gpu) = match random.below(4) {
        0 | 1 => (1 + random.below(8), 1 + random.below(8), GpuDemand::None),
        2 => (
            2 + random.below(6),
            4 + random.below(12),
            GpuDemand::Slice((4 + random.below(37)) * GIB),
        ),
        _ => (
            8 + random.below(8),
            16 + random.below(48),
            GpuDemand::Whole(1 + random.below(2) as u32),
        ),
    };
    Request {
        resources: Resources {
            cpu_millis: cores_half * 500,
            memory_bytes: memory_gib * GIB,
            disk_bytes: 20 * GIB,
        },
        gpu,
        ..Request::default()
    }
}

/// Share of GPU memory held by placements (a whole GPU counts in full).
fn gpu_share_in_use(cluster: &Cluster) -> f64 {
    let (mut used, mut total) = (0u64, 0u64);
    for gpu in cluster.nodes().iter().flat_map(|node| &node.gpus) {
        total += gpu.memory_bytes;
        used += gpu.memory_bytes - gpu.free_by_allocations();
    }
    if total == 0 {
        0.0
    } else {
        used as f64 / total as f64
    }
}

/// Runs the benchmark and prints its figures.
pub fn run(args: SchedulerBenchArgs) -> ExitCode {
    let policy = match args.policy.as_str() {
        "spread" => Policy::Spread,
        "binpack" => Policy::Binpack,
        other => {
            eprintln!("berth bench scheduler: --policy {other:?} is not spread or binpack");
            return ExitCode::from(2);
        }
    };
    let mut random = SeededRandom::new(args.seed);
    let nodes = (1..=args.nodes as i64)
        .map(|id| synthetic_node(id, &mut random))
        .collect();
    let requests: Vec<Request> = (0..args.services)
        .map(|_| synthetic_request(&mut random))
        .collect();
    let mut cluster = Cluster::new(nodes);
    let options = Options {
        policy,
        candidates: args.candidates,
        seed: args.seed,
    };
    let (mut placed, mut refused, mut whole_gpus, mut slices) = (0usize, 0usize, 0usize, 0usize);
    let mut first_gpu_refusal: Option<(usize, f64)> = None;
    let started = Instant::now();
    for (position, request) in requests.iter().enumerate() {
        match cluster.place(request, &options) {
            Ok(placement) => {
                match placement.gpus {
                    GpuAssignment::Whole(_) => whole_gpus += 1,
                    GpuAssignment::Slice { .. } => slices += 1,
                    GpuAssignment::None => {}
                }
                if cluster.commit(request, &placement).is_err() {
                    eprintln!("berth bench scheduler: a fresh placement did not commit");
                    return ExitCode::FAILURE;
                }
                placed += 1;
            }
            Err(_) => {
                refused += 1;
                if request.gpu != GpuDemand::None && first_gpu_refusal.is_none() {
                    first_gpu_refusal = Some((position, gpu_share_in_use(&cluster)));
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("nodes: {}", args.nodes);
    println!("requests: {}", args.services);
    println!("policy: {}", args.policy);
    println!("candidates: {}", args.candidates);
    println!("placed: {placed} (whole-GPU {whole_gpus}, GPU slices {slices})");
    println!("refused: {refused}");
    println!("seconds: {elapsed:.3}");
    println!(
        "placements_per_second: {:.0}",
        args.services as f64 / elapsed.max(f64::EPSILON)
    );
    match first_gpu_refusal {
        Some((position, share)) => {
            println!("first_gpu_refusal_at_request: {position}");
            println!("gpu_packing_efficiency: {:.3}", share);
        }
        None => println!("first_gpu_refusal_at_request: none"),
    }
    println!("gpu_share_in_use_at_end: {:.3}", gpu_share_in_use(&cluster));
    ExitCode::SUCCESS
}
