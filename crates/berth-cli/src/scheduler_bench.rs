//! `berth bench scheduler`: places a stream of mixed requests (CPU, whole-GPU, GPU-memory slice)
//! on a synthetic cluster of mixed nodes with the real scheduler, one placement after another on
//! one core, and prints the rate and how full the GPUs were when the first GPU request was
//! refused — for the indexed walk and for checking every node in turn, on the same stream, and
//! says whether both chose the same nodes. The time of deciding and the time of explaining the
//! refusals are taken apart: an explanation checks every node by design.

use std::process::ExitCode;
use std::time::Instant;

use berth_core::schedule::{
    Cluster, GpuAssignment, GpuDemand, GpuState, NodeState, Options, Placement, Policy, Request,
    Resources, ServerType, Walk,
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
    let nodes: Vec<NodeState> = (1..=args.nodes as i64)
        .map(|id| synthetic_node(id, &mut random))
        .collect();
    let requests: Vec<Request> = (0..args.services)
        .map(|_| synthetic_request(&mut random))
        .collect();
    let options = Options {
        policy,
        candidates: args.candidates,
        seed: args.seed,
    };
    println!("nodes: {}", args.nodes);
    println!("requests: {}", args.services);
    println!("policy: {}", args.policy);
    println!("candidates: {}", args.candidates);
    let indexed = stream(&nodes, &requests, &options, Walk::Indexed);
    let scanning = stream(&nodes, &requests, &options, Walk::Scanning);
    indexed.print("indexed");
    scanning.print("scanning");
    println!(
        "speed-up (decisions): {:.2}",
        scanning.deciding / indexed.deciding.max(f64::EPSILON)
    );
    if indexed.placements != scanning.placements {
        eprintln!("berth bench scheduler: the two walks chose different nodes");
        return ExitCode::FAILURE;
    }
    println!("same placements: yes");
    ExitCode::SUCCESS
}

/// What one walk did with the stream.
struct Outcome {
    requests: usize,
    placements: Vec<Option<Placement>>,
    whole_gpus: usize,
    slices: usize,
    /// Seconds spent deciding (and committing).
    deciding: f64,
    /// Seconds spent explaining refusals.
    explaining: f64,
    first_gpu_refusal: Option<(usize, f64)>,
    gpu_share_at_end: f64,
}

impl Outcome {
    fn print(&self, walk: &str) {
        let placed = self.placements.iter().flatten().count();
        let refused = self.requests - placed;
        let rate = |seconds: f64| self.requests as f64 / seconds.max(f64::EPSILON);
        println!(
            "{walk}: placed {placed} (whole-GPU {}, GPU slices {}), refused {refused}",
            self.whole_gpus, self.slices
        );
        println!(
            "{walk}: decisions_per_second {:.0} ({:.3} s)",
            rate(self.deciding),
            self.deciding
        );
        println!(
            "{walk}: with every refusal explained {:.0} per second ({:.3} s explaining, {:.1} µs each)",
            rate(self.deciding + self.explaining),
            self.explaining,
            self.explaining * 1e6 / refused.max(1) as f64
        );
        match self.first_gpu_refusal {
            Some((position, share)) => println!(
                "{walk}: first GPU refusal at request {position}, GPU share in use {share:.3}"
            ),
            None => println!("{walk}: no GPU refusal"),
        }
        println!(
            "{walk}: GPU share in use at the end {:.3}",
            self.gpu_share_at_end
        );
    }
}

/// Places `requests` one after another on a fresh cluster of `nodes`, walking it by `walk`.
fn stream(nodes: &[NodeState], requests: &[Request], options: &Options, walk: Walk) -> Outcome {
    let mut cluster = Cluster::new(nodes.to_vec());
    let mut outcome = Outcome {
        requests: requests.len(),
        placements: Vec::with_capacity(requests.len()),
        whole_gpus: 0,
        slices: 0,
        deciding: 0.0,
        explaining: 0.0,
        first_gpu_refusal: None,
        gpu_share_at_end: 0.0,
    };
    let mut refusals = Vec::new();
    let started = Instant::now();
    for (position, request) in requests.iter().enumerate() {
        let decided = cluster.decide(request, options, walk);
        if let Some(placement) = &decided {
            match placement.gpus {
                GpuAssignment::Whole(_) => outcome.whole_gpus += 1,
                GpuAssignment::Slice { .. } => outcome.slices += 1,
                GpuAssignment::None => {}
            }
            cluster
                .commit(request, placement)
                .expect("a fresh placement commits");
        } else {
            if request.gpu != GpuDemand::None && outcome.first_gpu_refusal.is_none() {
                outcome.first_gpu_refusal = Some((position, gpu_share_in_use(&cluster)));
            }
            // Explained on the cluster as it is now, timed apart from deciding.
            let explaining = Instant::now();
            refusals.push(cluster.explain(request).nodes());
            outcome.explaining += explaining.elapsed().as_secs_f64();
        }
        outcome.placements.push(decided);
    }
    outcome.deciding = started.elapsed().as_secs_f64() - outcome.explaining;
    outcome.gpu_share_at_end = gpu_share_in_use(&cluster);
    assert!(
        refusals.iter().all(|counted| *counted == nodes.len()),
        "every refusal counts every node"
    );
    outcome
}
