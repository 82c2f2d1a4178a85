use proptest::prelude::*;

use super::*;

const GIB: u64 = 1 << 30;

fn node(id: i64, server_type: ServerType, gpus: &[u64]) -> NodeState {
    NodeState {
        id,
        name: format!("n{id}"),
        server_type,
        enabled: true,
        listed: true,
        healthy: true,
        priority: 100,
        weight: 100,
        labels: BTreeMap::new(),
        capacity: Resources {
            cpu_millis: 16_000,
            memory_bytes: 64 * GIB,
            disk_bytes: 500 * GIB,
        },
        allocated: Resources::default(),
        max_containers: 100,
        containers: 0,
        gpus: gpus
            .iter()
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

fn cpu_request(cpu_millis: u64) -> Request {
    Request {
        resources: Resources {
            cpu_millis,
            memory_bytes: GIB,
            disk_bytes: 0,
        },
        ..Request::default()
    }
}

fn gpu_request(gpu: GpuDemand) -> Request {
    Request {
        gpu,
        ..cpu_request(1000)
    }
}

fn all_candidates() -> Options {
    Options {
        candidates: 0,
        ..Options::default()
    }
}

#[test]
fn gpu_work_only_on_gpu_servers_and_cpu_work_prefers_cpu_then_edge_then_gpu() {
    let mut cluster = Cluster::new(vec![
        node(1, ServerType::Gpu, &[80]),
        node(2, ServerType::Edge, &[]),
        node(3, ServerType::Cpu, &[]),
    ]);
    let options = all_candidates();
    let gpu = gpu_request(GpuDemand::Whole(1));
    assert_eq!(cluster.place(&gpu, &options).expect("fits").node_id, 1);
    let cpu = cpu_request(8000);
    let first = cluster.place(&cpu, &options).expect("fits");
    assert_eq!(first.node_id, 3, "cpu first");
    cluster.commit(&cpu, &first).expect("commit");
    cluster.commit(&cpu, &first).expect("commit");
    assert_eq!(
        cluster.place(&cpu, &options).expect("fits").node_id,
        2,
        "edge when cpu is full"
    );
    cluster.set_healthy(2, false);
    assert_eq!(
        cluster.place(&cpu, &options).expect("fits").node_id,
        1,
        "gpu last"
    );
}

#[test]
fn priority_first_then_least_load_per_weight_or_binpack() {
    let mut low = node(1, ServerType::Cpu, &[]);
    low.priority = 200;
    let mut light = node(2, ServerType::Cpu, &[]);
    light.allocated.cpu_millis = 4000;
    let mut heavy_but_weighty = node(3, ServerType::Cpu, &[]);
    heavy_but_weighty.allocated.cpu_millis = 6000;
    heavy_but_weighty.weight = 200;
    let cluster = Cluster::new(vec![low, light, heavy_but_weighty]);
    let request = cpu_request(2000);
    // Loads after placing: n2 6/16 per 1.0 = 0.375; n3 8/16 per 2.0 = 0.25.
    assert_eq!(
        cluster
            .place(&request, &all_candidates())
            .expect("fits")
            .node_id,
        3
    );
    let binpack = Options {
        policy: Policy::Binpack,
        ..all_candidates()
    };
    // Free after placing: n2 0.625 per 1.0; n3 0.5 per 2.0 = 0.25: the fuller, weightier one.
    assert_eq!(cluster.place(&request, &binpack).expect("fits").node_id, 3);
    let mut plain = Cluster::new(vec![
        node(1, ServerType::Cpu, &[]),
        node(2, ServerType::Cpu, &[]),
    ]);
    let first = plain.place(&request, &binpack).expect("fits");
    plain.commit(&request, &first).expect("commit");
    assert_eq!(
        plain.place(&request, &binpack).expect("fits").node_id,
        first.node_id,
        "binpack keeps filling the same node"
    );
    assert_ne!(
        plain
            .place(&request, &all_candidates())
            .expect("fits")
            .node_id,
        first.node_id,
        "spread moves on"
    );
}

#[test]
fn slices_pack_best_fit_and_whole_gpus_stay_exclusive() {
    let mut gpu_node = node(1, ServerType::Gpu, &[80, 80, 24]);
    gpu_node.gpus[1].sliced_bytes = 40 * GIB;
    let mut cluster = Cluster::new(vec![gpu_node]);
    let options = all_candidates();
    let slice = gpu_request(GpuDemand::Slice(20 * GIB));
    let placed = cluster.place(&slice, &options).expect("fits");
    assert_eq!(
        placed.gpus,
        GpuAssignment::Slice {
            index: 2,
            memory_bytes: 20 * GIB
        },
        "the tightest fit: 24 GiB GPU"
    );
    cluster.commit(&slice, &placed).expect("commit");
    let next = cluster.place(&slice, &options).expect("fits");
    assert_eq!(
        next.gpus,
        GpuAssignment::Slice {
            index: 1,
            memory_bytes: 20 * GIB
        },
        "then the partly sliced GPU, keeping GPU 0 whole"
    );
    cluster.commit(&slice, &next).expect("commit");
    let whole = gpu_request(GpuDemand::Whole(1));
    let taken = cluster.place(&whole, &options).expect("fits");
    assert_eq!(taken.gpus, GpuAssignment::Whole(vec![0]));
    cluster.commit(&whole, &taken).expect("commit");
    let refusal = cluster
        .place(&whole, &options)
        .expect_err("no whole GPU left");
    assert_eq!(
        refusal.to_string(),
        "no node can run it: 1 node: not enough free GPUs (node n1: GPUs asked 1, free 0)"
    );
    assert!(
        cluster.commit(&whole, &taken).is_err(),
        "a GPU cannot be booked twice"
    );
    // GPU 0 has a whole tenant: no slices there, and GPU 1 has 20 GiB left.
    let big_slice = gpu_request(GpuDemand::Slice(30 * GIB));
    assert_eq!(
        cluster
            .place(&big_slice, &options)
            .expect_err("too big")
            .to_string(),
        "no node can run it: 1 node: not enough GPU memory on any single GPU (allocations) (node n1: GPU memory asked 30 GiB, most free on one GPU 20 GiB)"
    );
    cluster.release(&whole, &taken);
    assert_eq!(
        cluster.place(&big_slice, &options).expect("fits").gpus,
        GpuAssignment::Slice {
            index: 0,
            memory_bytes: 30 * GIB
        },
        "released GPU takes slices again"
    );
}

#[test]
fn observed_free_memory_limits_slices_and_whole_gpus_and_the_refusal_says_so() {
    let mut busy = node(1, ServerType::Gpu, &[80]);
    busy.gpus[0].observed_free_bytes = Some(10 * GIB);
    let cluster = Cluster::new(vec![busy]);
    let options = all_candidates();
    assert_eq!(
        cluster
            .place(&gpu_request(GpuDemand::Slice(20 * GIB)), &options)
            .expect_err("observed short")
            .to_string(),
        "no node can run it: 1 node: not enough GPU memory on any single GPU (observed free) (node n1: GPU memory asked 20 GiB, most free on one GPU 10 GiB)"
    );
    assert_eq!(
        cluster
            .place(&gpu_request(GpuDemand::Whole(1)), &options)
            .expect_err("observed busy")
            .to_string(),
        "no node can run it: 1 node: not enough free GPUs (observed memory in use) (node n1: GPUs asked 1, free 0)"
    );
    assert!(
        cluster
            .place(&gpu_request(GpuDemand::Slice(8 * GIB)), &options)
            .is_ok()
    );
}

#[test]
fn a_refusal_gives_asked_and_free_of_the_closest_nodes() {
    let mut small = node(1, ServerType::Cpu, &[]);
    small.capacity.cpu_millis = 4000;
    small.allocated.cpu_millis = 2500;
    let mut smaller = node(2, ServerType::Cpu, &[]);
    smaller.capacity.cpu_millis = 4000;
    smaller.allocated.cpu_millis = 3500;
    let mut full = node(3, ServerType::Cpu, &[]);
    full.capacity.memory_bytes = 4 * GIB;
    full.allocated.memory_bytes = 3 * GIB + GIB / 2;
    let cluster = Cluster::new(vec![smaller, small, full]);
    let mut request = cpu_request(4000);
    request.resources.memory_bytes = GIB;
    let refusal = cluster
        .place(&request, &Options::default())
        .expect_err("too big");
    assert_eq!(
        refusal.to_string(),
        "no node can run it: 2 nodes: not enough CPU; 1 node: not enough memory \
         (node n3: memory asked 1 GiB, free 512 MiB; node n1: CPU asked 4 cores, free 1.5; \
         node n2: CPU asked 4 cores, free 0.5)"
    );
}

#[test]
fn the_refusal_counts_every_node_by_its_first_short_dimension() {
    let mut nodes: Vec<NodeState> = (1..=5)
        .map(|id| {
            let mut gpu_node = node(id, ServerType::Gpu, &[24]);
            gpu_node.gpus[0].sliced_bytes = 16 * GIB;
            gpu_node
        })
        .collect();
    let mut disabled = node(6, ServerType::Gpu, &[80]);
    disabled.enabled = false;
    let mut drained = node(7, ServerType::Gpu, &[80]);
    drained.listed = false;
    let mut down = node(8, ServerType::Gpu, &[80]);
    down.healthy = false;
    nodes.extend([disabled, drained, down, node(9, ServerType::Cpu, &[])]);
    let cluster = Cluster::new(nodes);
    let refusal = cluster
        .place(
            &gpu_request(GpuDemand::Slice(16 * GIB)),
            &Options::default(),
        )
        .expect_err("nothing fits");
    assert_eq!(
        refusal.to_string(),
        "no node can run it: 5 nodes: not enough GPU memory on any single GPU (allocations); \
         1 node: disabled; 1 node: unlisted; 1 node: unhealthy; 1 node: not a GPU server \
         (node n1: GPU memory asked 16 GiB, most free on one GPU 8 GiB; \
         node n2: GPU memory asked 16 GiB, most free on one GPU 8 GiB; \
         node n3: GPU memory asked 16 GiB, most free on one GPU 8 GiB)"
    );
    assert_eq!(
        refusal.shortfalls.len(),
        SHORTFALLS_KEPT,
        "the closest nodes' amounts only"
    );
    assert_eq!(refusal.nodes(), 9);
    assert!(refusal.short_of_capacity());
    assert_eq!(
        Cluster::new(Vec::new())
            .place(&cpu_request(1), &Options::default())
            .expect_err("empty")
            .to_string(),
        "no compute node is registered"
    );
}

#[test]
fn labels_max_containers_only_node_and_avoid() {
    let mut labelled = node(1, ServerType::Cpu, &[]);
    labelled.labels.insert("zone".into(), "a".into());
    let mut full = node(2, ServerType::Cpu, &[]);
    full.labels.insert("zone".into(), "a".into());
    full.max_containers = 1;
    full.containers = 1;
    let cluster = Cluster::new(vec![labelled, full, node(3, ServerType::Cpu, &[])]);
    let options = all_candidates();
    let mut request = cpu_request(1000);
    request.constraints.insert("zone".into(), "a".into());
    assert_eq!(cluster.place(&request, &options).expect("fits").node_id, 1);
    request.avoid.insert(1);
    assert_eq!(
        cluster
            .place(&request, &options)
            .expect_err("none")
            .to_string(),
        "no node can run it: 1 node: the node it moves away from; 1 node: labels do not match; \
         1 node: at MAX_CONTAINERS"
    );
    let mut pinned = cpu_request(1000);
    pinned.only_node = Some(3);
    assert_eq!(cluster.place(&pinned, &options).expect("fits").node_id, 3);
    pinned.only_node = Some(2);
    assert_eq!(
        cluster
            .place(&pinned, &options)
            .expect_err("full")
            .to_string(),
        "no node can run it: 2 nodes: not the requested node; 1 node: at MAX_CONTAINERS"
    );
}

#[test]
fn sampling_still_finds_the_one_node_with_room() {
    let mut nodes: Vec<NodeState> = (1..=200)
        .map(|id| {
            let mut busy = node(id, ServerType::Cpu, &[]);
            busy.allocated.cpu_millis = 15_500;
            busy
        })
        .collect();
    nodes[137].allocated.cpu_millis = 0;
    let cluster = Cluster::new(nodes);
    let options = Options {
        candidates: 2,
        ..Options::default()
    };
    assert_eq!(
        cluster
            .place(&cpu_request(4000), &options)
            .expect("fits")
            .node_id,
        138
    );
}

// ---- Property tests against an independent model of the rules ----

/// The test's own model of a node, kept from the placements the scheduler returns.
#[derive(Debug, Clone)]
struct Model {
    node: NodeState,
    whole: BTreeSet<u32>,
    slices: BTreeMap<u32, u64>,
    observed_used: BTreeMap<u32, u64>,
}

impl Model {
    fn gpu_free(&self, gpu: &GpuState) -> u64 {
        if self.whole.contains(&gpu.index) || gpu.whole_tenant {
            return 0;
        }
        let sliced = gpu.sliced_bytes + self.slices.get(&gpu.index).copied().unwrap_or(0);
        let by_allocations = gpu.memory_bytes.saturating_sub(sliced);
        match gpu.observed_free_bytes {
            Some(observed) => by_allocations.min(
                observed.saturating_sub(self.observed_used.get(&gpu.index).copied().unwrap_or(0)),
            ),
            None => by_allocations,
        }
    }

    fn whole_free(&self, gpu: &GpuState) -> bool {
        !gpu.whole_tenant
            && gpu.sliced_bytes == 0
            && !self.whole.contains(&gpu.index)
            && !self.slices.contains_key(&gpu.index)
            && gpu
                .observed_free_bytes
                .is_none_or(|free| free as f64 >= gpu.memory_bytes as f64 * 0.9)
    }

    fn fits(&self, request: &Request) -> bool {
        let node = &self.node;
        let needs_gpu = !matches!(request.gpu, GpuDemand::None | GpuDemand::Whole(0));
        node.enabled
            && node.listed
            && node.healthy
            && (!needs_gpu || node.server_type == ServerType::Gpu)
            && node.containers < node.max_containers
            && node.allocated.cpu_millis + request.resources.cpu_millis <= node.capacity.cpu_millis
            && node.allocated.memory_bytes + request.resources.memory_bytes
                <= node.capacity.memory_bytes
            && node.allocated.disk_bytes + request.resources.disk_bytes <= node.capacity.disk_bytes
            && match request.gpu {
                GpuDemand::None | GpuDemand::Whole(0) => true,
                GpuDemand::Whole(count) => {
                    node.gpus.iter().filter(|gpu| self.whole_free(gpu)).count() >= count as usize
                }
                GpuDemand::Slice(bytes) => node.gpus.iter().any(|gpu| self.gpu_free(gpu) >= bytes),
            }
    }

    fn apply(&mut self, request: &Request, gpus: &GpuAssignment) {
        assert!(
            self.fits(request),
            "placed where it does not fit: {request:?}"
        );
        let node = &mut self.node;
        node.allocated.cpu_millis += request.resources.cpu_millis;
        node.allocated.memory_bytes += request.resources.memory_bytes;
        node.allocated.disk_bytes += request.resources.disk_bytes;
        node.containers += 1;
        match (request.gpu, gpus) {
            (GpuDemand::None | GpuDemand::Whole(0), GpuAssignment::None) => {}
            (GpuDemand::Whole(count), GpuAssignment::Whole(indices)) => {
                assert_eq!(indices.len(), count as usize);
                for index in indices {
                    let gpu = self
                        .node
                        .gpus
                        .iter()
                        .find(|gpu| gpu.index == *index)
                        .cloned();
                    let gpu = gpu.expect("an existing GPU");
                    assert!(self.whole_free(&gpu), "GPU {index} double-booked");
                    self.whole.insert(*index);
                }
            }
            (
                GpuDemand::Slice(bytes),
                GpuAssignment::Slice {
                    index,
                    memory_bytes,
                },
            ) => {
                assert_eq!(bytes, *memory_bytes);
                let gpu = self
                    .node
                    .gpus
                    .iter()
                    .find(|gpu| gpu.index == *index)
                    .cloned();
                let gpu = gpu.expect("an existing GPU");
                assert!(self.gpu_free(&gpu) >= bytes, "slice past the GPU's memory");
                *self.slices.entry(*index).or_default() += bytes;
                *self.observed_used.entry(*index).or_default() += bytes;
            }
            other => panic!("assignment does not match the demand: {other:?}"),
        }
    }
}

fn arb_node(id: i64) -> impl Strategy<Value = NodeState> {
    (
        prop_oneof![
            Just(ServerType::Cpu),
            Just(ServerType::Gpu),
            Just(ServerType::Edge)
        ],
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.9),
        0i64..3,
        1u32..300,
        (1u64..=64, 1u64..=256, 1u32..=12),
        prop::collection::vec(
            (
                prop_oneof![Just(16u64), Just(24), Just(80)],
                prop::option::of(0u64..=80),
            ),
            0..4,
        ),
    )
        .prop_map(
            move |(
                server_type,
                enabled,
                healthy,
                priority,
                weight,
                (cores, memory, slots),
                gpus,
            )| {
                NodeState {
                    id,
                    name: format!("n{id}"),
                    server_type,
                    enabled,
                    listed: true,
                    healthy,
                    priority,
                    weight,
                    labels: BTreeMap::new(),
                    capacity: Resources {
                        cpu_millis: cores * 1000,
                        memory_bytes: memory * GIB,
                        disk_bytes: 1000 * GIB,
                    },
                    allocated: Resources::default(),
                    max_containers: slots,
                    containers: 0,
                    gpus: gpus
                        .into_iter()
                        .enumerate()
                        .map(|(index, (memory, observed))| GpuState {
                            index: index as u32,
                            memory_bytes: memory * GIB,
                            whole_tenant: false,
                            sliced_bytes: 0,
                            observed_free_bytes: observed.map(|free| free.min(memory) * GIB),
                        })
                        .collect(),
                }
            },
        )
}

fn arb_request() -> impl Strategy<Value = Request> {
    (
        1u64..=16,
        1u64..=64,
        prop_oneof![
            3 => Just(GpuDemand::None),
            1 => (1u32..=3).prop_map(GpuDemand::Whole),
            2 => (1u64..=40).prop_map(|gib| GpuDemand::Slice(gib * GIB)),
        ],
    )
        .prop_map(|(cores, memory, gpu)| Request {
            resources: Resources {
                cpu_millis: cores * 500,
                memory_bytes: memory * GIB / 2,
                disk_bytes: 10 * GIB,
            },
            gpu,
            ..Request::default()
        })
}

fn arb_options() -> impl Strategy<Value = Options> {
    (any::<bool>(), 0usize..4, any::<u64>()).prop_map(|(binpack, candidates, seed)| Options {
        policy: if binpack {
            Policy::Binpack
        } else {
            Policy::Spread
        },
        candidates,
        seed,
    })
}

fn arb_cluster() -> impl Strategy<Value = Vec<NodeState>> {
    (1usize..10).prop_flat_map(|count| (1..=count as i64).map(arb_node).collect::<Vec<_>>())
}

fn run(nodes: &[NodeState], requests: &[Request], options: &Options) -> Vec<Option<Placement>> {
    let mut cluster = Cluster::new(nodes.to_vec());
    let mut models: BTreeMap<i64, Model> = nodes
        .iter()
        .map(|node| {
            (
                node.id,
                Model {
                    node: node.clone(),
                    whole: BTreeSet::new(),
                    slices: BTreeMap::new(),
                    observed_used: BTreeMap::new(),
                },
            )
        })
        .collect();
    let mut placements = Vec::new();
    for request in requests {
        match cluster.place(request, options) {
            Ok(placement) => {
                models
                    .get_mut(&placement.node_id)
                    .expect("a known node")
                    .apply(request, &placement.gpus);
                cluster
                    .commit(request, &placement)
                    .expect("a fresh placement commits");
                placements.push(Some(placement));
            }
            Err(refusal) => {
                assert!(
                    models.values().all(|model| !model.fits(request)),
                    "refused ({refusal}) although a node fits {request:?}"
                );
                assert_eq!(refusal.nodes(), nodes.len());
                placements.push(None);
            }
        }
    }
    for model in models.values() {
        let node = cluster.node(model.node.id).expect("node");
        assert!(node.allocated.cpu_millis <= node.capacity.cpu_millis);
        assert!(node.allocated.memory_bytes <= node.capacity.memory_bytes);
        assert!(node.containers <= node.max_containers);
        for gpu in &node.gpus {
            assert!(gpu.sliced_bytes <= gpu.memory_bytes);
            assert!(
                !(gpu.whole_tenant && gpu.sliced_bytes > 0),
                "whole GPU with slices"
            );
        }
    }
    placements
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn never_overcommits_never_double_books_and_places_whatever_fits(
        nodes in arb_cluster(),
        requests in prop::collection::vec(arb_request(), 1..60),
        options in arb_options(),
    ) {
        let first = run(&nodes, &requests, &options);
        let mut shuffled = nodes.clone();
        shuffled.reverse();
        let second = run(&shuffled, &requests, &options);
        prop_assert_eq!(first, second, "same input, same output");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The index is kept through commits, releases and health changes, and never skips a node
    /// a scan would choose: both walks decide the same, request after request.
    #[test]
    fn the_index_chooses_what_checking_every_node_chooses(
        nodes in (1usize..40).prop_flat_map(|count| (1..=count as i64).map(arb_node).collect::<Vec<_>>()),
        requests in prop::collection::vec(arb_request(), 1..120),
        options in arb_options(),
    ) {
        let mut cluster = Cluster::new(nodes.clone());
        let mut held: Vec<(Request, Placement)> = Vec::new();
        for (step, request) in requests.iter().enumerate() {
            let indexed = cluster.decide(request, &options, Walk::Indexed);
            let scanned = cluster.decide(request, &options, Walk::Scanning);
            prop_assert_eq!(&indexed, &scanned, "request {}: {:?}", step, request);
            if let Some(placement) = indexed {
                cluster.commit(request, &placement).expect("a fresh placement commits");
                held.push((request.clone(), placement));
            }
            if step % 7 == 6 && !held.is_empty() {
                let (request, placement) = held.remove(0);
                cluster.release(&request, &placement);
            }
            if step % 5 == 4 {
                let id = nodes[step % nodes.len()].id;
                let healthy = cluster.node(id).is_some_and(|node| node.healthy);
                cluster.set_healthy(id, !healthy);
            }
        }
    }
}

#[test]
fn every_reason_sits_at_its_own_discriminant() {
    for (position, reason) in Reason::ALL.iter().enumerate() {
        assert_eq!(*reason as usize, position, "{reason:?}");
    }
}

#[test]
fn labels_are_checked_and_the_error_names_the_key() {
    let good = BTreeMap::from([
        ("zone".to_owned(), "eu-1".to_owned()),
        ("gpu/arch".to_owned(), String::new()),
    ]);
    assert!(validate_labels("labels", &good).is_ok());
    let bad_key = BTreeMap::from([("a b".to_owned(), "x".to_owned())]);
    assert_eq!(
        validate_labels("labels", &bad_key)
            .expect_err("bad key")
            .field,
        "labels"
    );
    let bad_value = BTreeMap::from([("zone".to_owned(), "x".repeat(64))]);
    assert_eq!(
        validate_labels("constraints", &bad_value)
            .expect_err("bad value")
            .field,
        "constraints.zone"
    );
}

#[test]
fn a_request_for_one_gpu_index_gets_that_gpu_or_a_refusal() {
    let cluster = Cluster::new(vec![node(1, ServerType::Gpu, &[80, 24])]);
    let options = all_candidates();
    let pinned = |index: u32, gpu: GpuDemand| Request {
        gpu_index: Some(index),
        ..gpu_request(gpu)
    };
    // Best fit alone would take the 24 GiB GPU; `cuda:0` asks for the first.
    let placed = cluster
        .place(&pinned(0, GpuDemand::Slice(20 * GIB)), &options)
        .expect("fits");
    assert_eq!(
        placed.gpus,
        GpuAssignment::Slice {
            index: 0,
            memory_bytes: 20 * GIB
        }
    );
    let whole = cluster
        .place(&pinned(1, GpuDemand::Whole(1)), &options)
        .expect("fits");
    assert_eq!(whole.gpus, GpuAssignment::Whole(vec![1]));
    assert!(
        cluster
            .place(&pinned(1, GpuDemand::Slice(30 * GIB)), &options)
            .is_err(),
        "GPU 1 has 24 GiB"
    );
    assert!(
        cluster
            .place(&pinned(2, GpuDemand::Whole(1)), &options)
            .is_err(),
        "there is no GPU 2"
    );
}

#[test]
fn most_free_spreads_slices_where_best_fit_packs_them() {
    let cluster = Cluster::new(vec![node(1, ServerType::Gpu, &[80, 24, 40])]);
    let options = all_candidates();
    let slice = |choice: GpuChoice| Request {
        gpu_choice: choice,
        ..gpu_request(GpuDemand::Slice(10 * GIB))
    };
    let index = |placed: Placement| match placed.gpus {
        GpuAssignment::Slice { index, .. } => index,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        index(
            cluster
                .place(&slice(GpuChoice::BestFit), &options)
                .expect("fits")
        ),
        1
    );
    assert_eq!(
        index(
            cluster
                .place(&slice(GpuChoice::MostFree), &options)
                .expect("fits")
        ),
        0
    );
}
