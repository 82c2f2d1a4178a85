//! The console's words in English and Chinese. Every entry carries both languages, so no page
//! can be translated by half; a test checks that every key the templates and the code ask for
//! is here.

use std::collections::HashMap;
use std::sync::OnceLock;

/// A page language.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lang {
    /// English.
    #[default]
    En,
    /// Simplified Chinese.
    Zh,
}

impl Lang {
    /// `en` / `zh`, or a browser tag such as `zh-CN` / `en-US`.
    pub fn parse(tag: &str) -> Option<Self> {
        let primary = tag.split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "en" => Some(Self::En),
            "zh" => Some(Self::Zh),
            _ => None,
        }
    }

    /// The code in cookies and URLs.
    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Zh => "zh",
        }
    }
}

/// The words of one language, as templates use them: `{{ t.get("nav.nodes") }}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tr(pub Lang);

impl Tr {
    /// The text of `key`; the key itself when there is none (a test keeps that from happening).
    pub fn get(&self, key: &str) -> &'static str {
        self.find(key).unwrap_or_else(|| {
            tracing::warn!(key, "The console has no text for this key.");
            "?"
        })
    }

    /// The text of `key`, if there is one.
    pub fn find(&self, key: &str) -> Option<&'static str> {
        let (english, chinese) = table().get(key)?;
        Some(match self.0 {
            Lang::En => english,
            Lang::Zh => chinese,
        })
    }

    /// The text of `{group}.{key}`, for values such as statuses (`t.pick("status", "failed")`);
    /// an unknown value shows as itself.
    pub fn pick(&self, group: &str, key: &str) -> String {
        self.find(&format!("{group}.{key}"))
            .map_or_else(|| key.to_owned(), str::to_owned)
    }

    /// The language's code (`en`, `zh`), for `<html lang>`.
    pub fn code(&self) -> &'static str {
        self.0.code()
    }
}

fn table() -> &'static HashMap<&'static str, (&'static str, &'static str)> {
    static TABLE: OnceLock<HashMap<&'static str, (&'static str, &'static str)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        TEXTS
            .iter()
            .map(|(key, english, chinese)| (*key, (*english, *chinese)))
            .collect()
    })
}

/// Key, English, Chinese.
const TEXTS: &[(&str, &str, &str)] = &[
    ("nav.skip", "Skip to content", "跳到正文"),
    ("nav.label", "Main", "主导航"),
    ("nav.overview", "Overview", "概览"),
    ("nav.nodes", "Compute nodes", "计算节点"),
    ("nav.catalog", "Specs & images", "规格与镜像"),
    ("nav.services", "Services", "服务"),
    ("nav.operations", "Operations", "操作记录"),
    ("nav.users", "Users & quotas", "用户与配额"),
    ("nav.tokens", "API tokens", "API 令牌"),
    ("nav.sign_out", "Sign out", "退出登录"),
    ("role.admin", "admin", "管理员"),
    ("role.user", "user", "普通用户"),
    ("word.yes", "yes", "是"),
    ("word.no", "no", "否"),
    ("sign_in.title", "Sign in", "登录"),
    (
        "sign_in.intro",
        "Sign in to the Berth console with an API token.",
        "使用 API 令牌登录 Berth 控制台。",
    ),
    ("sign_in.token", "API token", "API 令牌"),
    (
        "sign_in.help",
        "`berth up` prints the admin token at start and keeps it in admin-token in its data directory (./berth-data unless --data-dir says otherwise); an admin can issue tokens to users.",
        "`berth up` 启动时会打印管理员令牌，并保存在其数据目录下的 admin-token 文件中（默认 ./berth-data，可用 --data-dir 指定）；管理员可以为用户签发令牌。",
    ),
    ("sign_in.submit", "Sign in", "登录"),
    ("sign_in.refused", "That token is not valid.", "令牌无效。"),
    (
        "sign_in.limited",
        "That token is limited to some services through the gateway; sign in with a token without a service limit.",
        "该令牌仅限通过网关访问指定服务；请使用不限服务的令牌登录。",
    ),
    ("error.title", "Refused", "操作被拒绝"),
    ("error.back", "Back", "返回"),
    ("error.forbidden", "Forbidden", "禁止访问"),
    (
        "error.admin_only",
        "This page is for admins.",
        "此页面仅限管理员访问。",
    ),
    ("filter.all", "All", "全部"),
    ("filter.apply", "Filter", "筛选"),
    ("filter.search", "Search", "搜索"),
    ("pager.label", "Pages", "分页"),
    ("pager.page", "page", "页"),
    ("pager.next", "Next page", "下一页"),
    ("pager.previous", "Previous page", "上一页"),
    ("form.save", "Save", "保存"),
    ("form.cancel", "Cancel", "取消"),
    ("form.set", "set", "已设置"),
    ("form.not_set", "not set", "未设置"),
    ("form.clear", "clear it", "清除"),
    ("form.upload", "read from a file", "从文件读取"),
    ("status.connected", "connected", "已连接"),
    ("status.failed", "failed", "连接失败"),
    ("status.unknown", "unknown", "未知"),
    ("state.created", "created", "已创建"),
    ("state.creating", "creating", "创建中"),
    ("state.running", "running", "运行中"),
    ("state.stopped", "stopped", "已停止"),
    ("state.error", "error", "错误"),
    ("state.unloaded", "unloaded", "已卸载"),
    ("state.deleting", "deleting", "删除中"),
    ("action.start", "Start", "启动"),
    ("action.stop", "Stop", "停止"),
    ("action.restart", "Restart", "重启"),
    ("action.load", "Load", "加载"),
    ("action.unload", "Unload", "卸载"),
    ("action.pause", "Pause the rollout", "暂停发布"),
    ("action.resume", "Resume the rollout", "继续发布"),
    (
        "action.promote",
        "Promote the new version",
        "全量切换到新版本",
    ),
    ("action.abort", "Abort the rollout", "中止发布"),
    ("action.rollout", "Rollout command", "发布指令"),
    ("action.scale", "Scaling", "扩缩容"),
    ("action.create", "Create", "创建"),
    ("action.delete", "Delete", "删除"),
    ("overview.title", "Overview", "概览"),
    ("overview.nodes", "Compute nodes", "计算节点"),
    (
        "overview.no_nodes",
        "No compute node yet.",
        "还没有计算节点。",
    ),
    ("overview.gpus", "GPU capacity", "GPU 容量"),
    ("overview.gpus_declared", "GPUs declared", "登记的 GPU"),
    ("overview.gpus_observed", "GPUs observed", "探测到的 GPU"),
    ("overview.gpus_whole", "Allocated whole", "整卡分配"),
    ("overview.gpus_slices", "Allocated slices", "切片分配"),
    (
        "overview.gpu_memory",
        "GPU memory in use (observed)",
        "GPU 显存使用（探测）",
    ),
    ("overview.services", "Services", "服务"),
    ("overview.recent", "Recent operations", "最近操作"),
    ("overview.all_operations", "All operations", "全部操作记录"),
    ("nodes.title", "Compute nodes", "计算节点"),
    ("nodes.node", "Node", "节点"),
    ("nodes.new", "New node", "新建节点"),
    (
        "nodes.join",
        "Add a node with one command",
        "一条命令添加节点",
    ),
    ("join.title", "Add a node", "添加节点"),
    (
        "join.intro",
        "Run this on the new host: its berth agent registers it with this hub. The token works once, for",
        "在新主机上运行以下命令：其 berth agent 会向本中心注册该主机。令牌只能使用一次，有效期",
    ),
    (
        "join.docker",
        "Or run the agent image with Docker:",
        "或者用 Docker 运行 agent 镜像：",
    ),
    ("join.joined", "Nodes that joined", "已加入的节点"),
    (
        "join.waiting",
        "Waiting for the agent to join… this list updates by itself.",
        "正在等待 agent 加入……此列表会自动更新。",
    ),
    (
        "nodes.new_help",
        "Fill in the node's hardware and how to reach its Docker engine: directly (TLS certificates) or through a berth agent. Saving tests the connection.",
        "填写节点的硬件信息以及访问其 Docker 引擎的方式：直接连接（TLS 证书）或通过 berth agent。保存时会测试连接。",
    ),
    ("nodes.edit", "Edit", "编辑"),
    ("nodes.status", "Status", "状态"),
    ("nodes.checked", "Last checked", "最后检测时间"),
    ("nodes.address", "Address", "地址"),
    ("nodes.message", "Message", "信息"),
    ("nodes.test", "Test connection", "测试连接"),
    ("nodes.test_result", "Connection test", "连接测试"),
    ("nodes.enable", "Enable", "启用"),
    ("nodes.disable", "Disable", "停用"),
    ("nodes.list", "Show in lists", "显示在列表中"),
    ("nodes.unlist", "Hide from lists", "从列表中隐藏"),
    ("nodes.hardware", "Hardware", "硬件"),
    ("nodes.connection", "Connection", "连接"),
    ("nodes.no_gpus", "No GPU.", "没有 GPU。"),
    ("nodes.gpu_memory", "Memory", "显存"),
    ("nodes.gpu_used", "In use", "已用"),
    ("nodes.gpu_holders", "Allocated to", "分配给"),
    ("nodes.gpu_free", "free", "空闲"),
    ("nodes.containers", "Containers", "容器"),
    (
        "nodes.no_containers",
        "No container of Berth's on this node.",
        "此节点上没有 Berth 管理的容器。",
    ),
    ("nodes.health", "Health history", "健康历史"),
    ("nodes.images", "Images on this node", "此节点上的镜像"),
    (
        "nodes.charts",
        "Resource use of the services placed here",
        "此节点上服务的资源使用",
    ),
    ("nodes.pull_image", "Pull an image", "拉取镜像"),
    ("nodes.pull", "Pull", "拉取"),
    (
        "nodes.no_images",
        "No images (or none could be read).",
        "没有镜像（或无法读取）。",
    ),
    ("nodes.image_size", "Size", "大小"),
    ("nodes.image_created", "Created (UTC)", "创建时间（UTC）"),
    ("nodes.remove_image", "Remove", "删除"),
    ("action.image_pull", "Pulling an image", "正在拉取镜像"),
    ("action.drain", "Draining", "正在排空"),
    (
        "nodes.all_operations",
        "Everything done on this node (services included)",
        "此节点上的全部操作（包括服务）",
    ),
    ("nodes.delete", "Delete node", "删除节点"),
    (
        "nodes.delete_help",
        "A node that still runs containers cannot be deleted; move or delete its services first.",
        "仍在运行容器的节点不能删除；请先迁移或删除其上的服务。",
    ),
    (
        "nodes.delete_confirm",
        "Yes, delete this node",
        "确认删除此节点",
    ),
    (
        "node.confirm_needed",
        "Tick the confirmation box to delete.",
        "请勾选确认框后再删除。",
    ),
    ("node.whole_gpu", "whole GPU", "整卡"),
    ("catalog.title", "Specs and images", "规格与镜像"),
    ("catalog.specs", "Product specs", "产品规格"),
    (
        "catalog.specs_help",
        "A spec sizes a service: CPU cores, memory, disks and GPUs (whole, or a slice of one GPU's memory).",
        "规格决定服务的资源：CPU 核数、内存、磁盘和 GPU（整卡，或单卡显存的一部分）。",
    ),
    ("catalog.no_specs", "No spec yet.", "还没有规格。"),
    ("catalog.images", "Images", "镜像"),
    ("catalog.no_images", "No image yet.", "还没有镜像。"),
    ("catalog.disks", "System / data disk", "系统盘 / 数据盘"),
    ("catalog.new_spec", "New spec", "新建规格"),
    ("catalog.new_image", "New image", "新建镜像"),
    ("catalog.edit", "Edit", "编辑"),
    ("catalog.delete", "Delete", "删除"),
    ("catalog.edit_spec", "Edit spec", "编辑规格"),
    ("catalog.edit_image", "Edit image", "编辑镜像"),
    ("services.title", "Services", "服务"),
    ("services.service", "Service", "服务"),
    ("services.new", "New service", "新建服务"),
    (
        "services.new_help",
        "A service runs an image on a node the scheduler picks. Size it with a spec, or with explicit CPU and memory.",
        "服务在调度器选择的节点上运行一个镜像。可用规格确定资源，也可直接填写 CPU 和内存。",
    ),
    ("services.create", "Create service", "创建服务"),
    ("services.none", "No service yet.", "还没有服务。"),
    ("services.owner", "Owner", "所有者"),
    ("services.state", "State", "状态"),
    ("services.node", "Node", "节点"),
    ("services.version", "Version", "版本"),
    ("services.updated", "Updated", "更新时间"),
    ("services.replica", "Replica", "副本"),
    ("services.facts", "Service", "服务信息"),
    ("services.resources", "Resources", "资源"),
    ("services.container", "Container", "容器"),
    ("services.gateway", "Gateway", "网关"),
    ("services.gateway_url", "Gateway URL", "网关地址"),
    ("services.ready", "Ready replicas", "就绪副本"),
    ("services.requests", "Requests", "请求数"),
    ("services.in_flight", "In flight", "处理中"),
    ("services.queued", "Waiting in the queue", "排队中"),
    ("services.model_names", "Model names", "模型名称"),
    (
        "services.tokens",
        "Tokens (prompt / completion)",
        "令牌数（提示 / 生成）",
    ),
    ("services.last_used", "Last used", "最近使用"),
    ("services.loaded_at", "Loaded at", "加载时间"),
    ("services.load_time", "Load took", "加载耗时"),
    ("services.logs", "Logs", "日志"),
    ("services.bulk", "With the checked services", "对勾选的服务"),
    (
        "services.edit",
        "Change image, environment or replicas",
        "修改镜像、环境变量或副本数",
    ),
    (
        "services.edit_help",
        "Deployed as the next version: the containers are replaced (started again if the service runs); the deployments below can roll it back.",
        "作为下一个版本部署：容器会被替换（若服务在运行则重新启动）；可通过下方的部署记录回滚。",
    ),
    ("services.edit_apply", "Deploy the change", "部署修改"),
    (
        "services.all_operations",
        "Every operation of this service",
        "此服务的全部操作",
    ),
    ("services.bulk_pick", "Choose", "选择"),
    ("services.bulk_apply", "Apply", "执行"),
    (
        "services.bulk_confirm",
        "I confirm (needed to delete)",
        "我确认（删除时必须勾选）",
    ),
    (
        "services.bulk_none",
        "check at least one service",
        "请至少勾选一个服务",
    ),
    ("services.bulk_accepted", "accepted", "已受理"),
    ("terminal.title", "Terminal", "终端"),
    (
        "terminal.intro",
        "A shell in the replica's container. What you type runs there as the container's user; the session is recorded in the operation log.",
        "在副本容器中打开的 shell。输入的命令以容器用户身份在其中运行；会话会记录在操作日志中。",
    ),
    ("terminal.connecting", "Connecting…", "正在连接…"),
    (
        "terminal.ended",
        "The shell ended (exit code {code}).",
        "shell 已结束（退出码 {code}）。",
    ),
    ("terminal.open", "Terminal", "终端"),
    (
        "services.logs_slow",
        "The node did not send the logs in time.",
        "节点未能及时返回日志。",
    ),
    (
        "services.not_placed",
        "The service is on no node.",
        "该服务未部署在任何节点上。",
    ),
    ("services.node_down", "(node down)", "（节点离线）"),
    (
        "services.charts",
        "Resource use, last hour",
        "资源使用（最近一小时）",
    ),
    ("services.deployments", "Deployments", "部署历史"),
    ("services.note", "Note", "说明"),
    ("services.current", "current", "当前版本"),
    ("services.rollback", "Roll back to", "回滚到"),
    ("services.delete", "Delete service", "删除服务"),
    (
        "services.delete_confirm",
        "Yes, delete this service and its containers",
        "确认删除此服务及其容器",
    ),
    (
        "services.confirm_needed",
        "Tick the confirmation box to delete.",
        "请勾选确认框后再删除。",
    ),
    ("logs.follow", "Follow", "实时跟踪"),
    ("logs.pause", "Pause", "暂停"),
    ("logs.resume", "Resume", "继续"),
    ("logs.search", "Search", "搜索"),
    ("chart.cpu", "CPU", "CPU"),
    ("chart.memory", "Memory", "内存"),
    ("chart.gpu_memory", "GPU memory", "GPU 显存"),
    ("chart.gpu_utilization", "GPU utilization", "GPU 利用率"),
    (
        "chart.tokens",
        "Tokens answered (prompt + completion)",
        "处理的 token 数（提示 + 生成）",
    ),
    ("chart.latest", "latest", "最新"),
    ("chart.highest", "highest", "最高"),
    ("chart.no_data", "no data yet", "暂无数据"),
    ("chart.range", "Time range", "时间范围"),
    ("range.15m", "15 min", "15 分钟"),
    ("range.1h", "1 hour", "1 小时"),
    ("range.6h", "6 hours", "6 小时"),
    ("range.24h", "24 hours", "24 小时"),
    ("operations.title", "Operations", "操作记录"),
    ("operations.none", "No operation.", "没有操作记录。"),
    ("operations.at", "When (UTC)", "时间（UTC）"),
    ("operations.user", "User", "用户"),
    ("operations.action", "Action", "操作"),
    ("operations.target", "Target", "对象"),
    ("operations.outcome", "Outcome", "结果"),
    ("operations.detail", "Detail", "详情"),
    ("operations.node_id", "Node id", "节点 ID"),
    ("operations.service_id", "Service id", "服务 ID"),
    ("operations.system", "the hub", "系统"),
    ("outcome.ok", "ok", "成功"),
    ("outcome.failed", "failed", "失败"),
    ("outcome.refused", "refused", "被拒绝"),
    ("outcome.rolled_back", "rolled back", "已回滚"),
    ("outcome.running", "running", "进行中"),
    ("outcome.cancelled", "cancelled", "已取消"),
    ("users.title", "Users and quotas", "用户与配额"),
    (
        "users.help",
        "Empty limits use the hub's defaults.",
        "留空的限额使用系统默认值。",
    ),
    ("users.services", "Services", "服务数"),
    ("users.new", "New user", "新建用户"),
    ("users.create", "Create user", "创建用户"),
    ("users.created", "Created", "已创建"),
    (
        "users.token_once",
        "This is their API token; it is shown only now.",
        "这是该用户的 API 令牌，只显示这一次。",
    ),
    ("tokens.title", "API tokens", "API 令牌"),
    ("tokens.issued", "Token issued.", "令牌已签发。"),
    (
        "tokens.once",
        "Copy it now: it is shown only this once.",
        "请立即复制：它只显示这一次。",
    ),
    (
        "tokens.help",
        "Tokens sign in to the API, the CLI, the gateway and this console. A revoked or expired token is refused at once, and console sessions opened with it end.",
        "令牌用于登录 API、命令行、网关和本控制台。被吊销或过期的令牌立即失效，用它打开的控制台会话随之结束。",
    ),
    ("tokens.none", "No tokens.", "没有令牌。"),
    ("tokens.created", "Created (UTC)", "创建时间（UTC）"),
    ("tokens.last_used", "Last used", "最近使用"),
    ("tokens.expires", "Expires", "过期时间"),
    ("tokens.revoke", "Revoke", "吊销"),
    ("tokens.new", "New token", "新建令牌"),
    ("tokens.create", "Issue token", "签发令牌"),
    ("users.tokens", "Tokens", "令牌"),
    ("field.expires_in_days", "Expires in (days)", "有效期（天）"),
    (
        "help.expires_in_days",
        "1 to 3650; leave empty for a token that lasts until revoked.",
        "1 到 3650；留空则一直有效，直到被吊销。",
    ),
    ("field.name", "Name", "名称"),
    ("field.region", "Region", "区域"),
    ("field.server_type", "Server type", "服务器类型"),
    ("field.cpu", "CPU", "CPU"),
    ("field.memory", "Memory", "内存"),
    ("field.system_disk", "System disk", "系统盘"),
    ("field.data_disk", "Data disk", "数据盘"),
    ("field.public_ip", "Public IP", "公网 IP"),
    ("field.private_ip", "Private IP", "内网 IP"),
    ("field.ssh_port", "SSH port", "SSH 端口"),
    ("field.ssh_user", "SSH user", "SSH 用户"),
    ("field.ssh_password", "SSH password", "SSH 密码"),
    ("field.gpu_model", "GPU model", "GPU 型号"),
    ("field.gpu_count", "GPU count", "GPU 数量"),
    ("field.gpu_memory_gb", "GPU memory (GB)", "显存（GB）"),
    (
        "field.hami_core_dir",
        "HAMi-core directory",
        "HAMi-core 目录",
    ),
    ("field.driver", "Connection", "连接方式"),
    ("field.docker_address", "Docker address", "Docker 地址"),
    ("field.use_tls", "Use TLS", "使用 TLS"),
    ("field.ca_cert", "CA certificate", "CA 证书"),
    ("field.client_cert", "Client certificate", "客户端证书"),
    ("field.client_key", "Client key", "客户端私钥"),
    ("field.agent_url", "Agent URL", "Agent 地址"),
    ("field.agent_api_key", "Agent API key", "Agent API 密钥"),
    ("field.enabled", "Enabled", "启用"),
    ("field.listed", "Listed", "显示"),
    ("field.priority", "Priority", "优先级"),
    ("field.weight", "Weight", "权重"),
    ("field.labels", "Labels", "标签"),
    ("field.remark", "Remark", "备注"),
    ("field.repo", "Repository", "仓库"),
    ("field.image", "Image", "镜像"),
    ("field.spec_id", "Spec", "规格"),
    ("field.cpu_limit", "CPU cores", "CPU 核数"),
    ("field.memory_limit", "Memory limit", "内存上限"),
    ("field.port", "HTTP port", "HTTP 端口"),
    ("field.command", "Command", "启动命令"),
    ("field.environment", "Environment", "环境变量"),
    ("field.replicas", "Replicas", "副本数"),
    ("field.constraints", "Node constraints", "节点约束"),
    ("field.is_public", "Public", "公开"),
    ("field.serving.routing.policy", "Routing", "路由策略"),
    (
        "field.serving.probe_path",
        "Readiness probe path",
        "就绪探测路径",
    ),
    ("field.serving.warmup.path", "Warmup path", "预热路径"),
    (
        "field.serving.idle_timeout_seconds",
        "Idle timeout (s)",
        "空闲超时（秒）",
    ),
    (
        "field.serving.start_timeout_seconds",
        "Start timeout (s)",
        "启动超时（秒）",
    ),
    (
        "field.serving.max_concurrency_per_replica",
        "Requests per replica at once",
        "每个副本的并发请求数",
    ),
    ("field.serving.queue_size", "Queue size", "排队上限"),
    ("field.start", "Start now", "立即启动"),
    ("field.cpu_cores", "CPU cores", "CPU 核数"),
    ("field.memory_split", "GPU slice (HAMi)", "GPU 切片（HAMi）"),
    ("field.reference", "Reference", "镜像引用"),
    ("field.description", "Description", "描述"),
    ("field.role", "Role", "角色"),
    ("field.max_services", "Max services", "服务上限"),
    ("field.max_cpu_cores", "Max CPU cores", "CPU 核数上限"),
    ("field.max_memory", "Max memory", "内存上限"),
    ("field.max_gpus", "Max GPUs", "GPU 上限"),
    (
        "help.name",
        "Lower-case letters, digits and dashes.",
        "小写字母、数字和短横线。",
    ),
    (
        "help.server_type",
        "gpu, cpu or edge: what the scheduler may place here.",
        "gpu、cpu 或 edge：决定调度器可在此放置的负载类型。",
    ),
    ("help.cpu", "Cores, for example 32.", "核数，例如 32。"),
    ("help.memory", "For example 128g.", "例如 128g。"),
    (
        "help.ssh_password",
        "Stored encrypted; never shown again.",
        "加密保存，不会再次显示。",
    ),
    (
        "help.hami_core_dir",
        "Where libvgpu.so is on the node, for GPU slices.",
        "节点上 libvgpu.so 所在目录，用于 GPU 切片。",
    ),
    (
        "help.driver",
        "docker: the hub reaches the engine itself; agent: through berth agent on the node.",
        "docker：由中心直接访问引擎；agent：通过节点上的 berth agent 访问。",
    ),
    (
        "help.docker_address",
        "unix:///var/run/docker.sock or tcp://HOST:2376.",
        "unix:///var/run/docker.sock 或 tcp://HOST:2376。",
    ),
    (
        "help.ca_cert",
        "Paste the PEM text or read it from a file. Stored encrypted; shown afterwards only as set or not set.",
        "粘贴 PEM 文本或从文件读取。加密保存，之后只显示“已设置”或“未设置”。",
    ),
    (
        "help.client_cert",
        "PEM, like the CA certificate.",
        "PEM 格式，同 CA 证书。",
    ),
    (
        "help.client_key",
        "PEM private key. Stored encrypted.",
        "PEM 格式私钥，加密保存。",
    ),
    (
        "help.agent_api_key",
        "The key the agent was started with. Stored encrypted.",
        "启动 agent 时使用的密钥，加密保存。",
    ),
    (
        "help.enabled",
        "Disabled nodes take no new work.",
        "停用的节点不接收新任务。",
    ),
    (
        "help.listed",
        "Unlisted nodes are hidden from users' lists.",
        "未显示的节点不会出现在用户的列表中。",
    ),
    ("help.priority", "Lower is tried first.", "数值越小越优先。"),
    (
        "help.weight",
        "Share of work among nodes of one priority.",
        "同一优先级节点之间的任务分配比例。",
    ),
    (
        "help.labels",
        "KEY=VALUE per line; services can require them.",
        "每行一个 KEY=VALUE；服务可以要求节点带有这些标签。",
    ),
    (
        "help.repo",
        "The repository the service belongs to (seed path /api/{user}/{repo}/services).",
        "服务所属的仓库（对应 /api/{user}/{repo}/services）。",
    ),
    (
        "help.image",
        "An image reference on the node, or one from the catalog.",
        "节点上的镜像引用，或从目录中选择。",
    ),
    (
        "help.spec_id",
        "Sizes the service; or leave it empty and give CPU and memory.",
        "决定服务的资源；也可以留空并直接填写 CPU 和内存。",
    ),
    (
        "help.memory_limit",
        "For example 512m or 4g.",
        "例如 512m 或 4g。",
    ),
    ("help.gpu_count", "Whole GPUs.", "整卡数量。"),
    (
        "help.port",
        "The port the service answers HTTP on (GRADIO_SERVER_PORT); the gateway routes to it.",
        "服务提供 HTTP 的端口（GRADIO_SERVER_PORT）；网关会把请求路由到这里。",
    ),
    (
        "help.command",
        "Split like a shell line; empty: the image's own.",
        "按 shell 规则拆分；留空则使用镜像自带的命令。",
    ),
    (
        "help.environment",
        "KEY=VALUE per line.",
        "每行一个 KEY=VALUE。",
    ),
    (
        "help.replicas",
        "Containers to run, each on a node of its own where possible.",
        "运行的容器数，尽量分布在不同节点上。",
    ),
    (
        "help.constraints",
        "KEY=VALUE per line: only nodes with these labels.",
        "每行一个 KEY=VALUE：只使用带有这些标签的节点。",
    ),
    (
        "help.serving.routing.policy",
        "How the gateway picks a replica (with a port): in turn, the least busy, at random, or the same replica per client.",
        "网关如何选择副本（需要端口）：轮流、最空闲、随机，或同一客户端固定同一副本。",
    ),
    (
        "help.serving.probe_path",
        "The gateway sends requests to a replica once GET on this path answers (default /).",
        "对该路径的 GET 请求有响应后，网关才把请求发往该副本（默认 /）。",
    ),
    (
        "help.serving.warmup.path",
        "Requests sent to each new replica before it takes traffic (3 POSTs), so a model is loaded.",
        "新副本接收流量前先发送到该路径的请求（3 次 POST），以便加载模型。",
    ),
    (
        "help.serving.idle_timeout_seconds",
        "Stop the service after this long without requests; the next request starts it again (scale to zero).",
        "无请求超过该时长后停止服务；下一个请求会再次启动它（缩容到零）。",
    ),
    (
        "help.serving.start_timeout_seconds",
        "How long a start may take before it counts as failed (default 120).",
        "启动超过该时长即视为失败（默认 120）。",
    ),
    (
        "help.serving.max_concurrency_per_replica",
        "More requests wait in order in the queue. Empty: no limit.",
        "超出的请求按到达顺序排队。留空：不限制。",
    ),
    (
        "help.serving.queue_size",
        "Requests that may wait; the next gets 429 (default 100).",
        "可排队的请求数；再多则返回 429（默认 100）。",
    ),
    (
        "help.is_public",
        "Anyone may call it through the gateway without a token.",
        "任何人都可以不带令牌通过网关访问。",
    ),
    (
        "help.memory_split",
        "A share of one GPU's memory instead of whole GPUs.",
        "使用单张 GPU 的部分显存，而不是整卡。",
    ),
    (
        "help.reference",
        "For example registry.example.org/team/model:1.2.",
        "例如 registry.example.org/team/model:1.2。",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key the templates and the console's code look up, and every form field's label.
    fn keys_in(dir: &std::path::Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("dir") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("file");
            for (marker, prefix) in [
                ("t.get(\"", ""),
                ("visitor.t.get(\"", ""),
                ("\n    required(\"", "field."),
                ("\n    field(\"", "field."),
            ] {
                for piece in text.split(marker).skip(1) {
                    if let Some(key) = piece.split('"').next() {
                        found.push(format!("{prefix}{key}"));
                    }
                }
            }
        }
    }

    #[test]
    fn every_word_the_console_shows_is_in_both_languages() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut used = Vec::new();
        keys_in(&root.join("templates/console"), &mut used);
        keys_in(&root.join("src"), &mut used);
        for group in [
            ["status.connected", "status.failed", "status.unknown"].as_slice(),
            &[
                "state.created",
                "state.creating",
                "state.running",
                "state.stopped",
            ],
            &[
                "state.error",
                "state.unloaded",
                "state.deleting",
                "role.user",
                "role.admin",
            ],
            &[
                "action.start",
                "action.stop",
                "action.restart",
                "action.load",
                "action.unload",
                "action.pause",
                "action.resume",
                "action.promote",
                "action.abort",
                "action.create",
                "action.delete",
            ],
        ] {
            used.extend(group.iter().map(|key| (*key).to_owned()));
        }
        assert!(used.len() > 150, "the scan found the keys: {}", used.len());
        let missing: Vec<_> = used
            .iter()
            .filter(|key| Tr(Lang::En).find(key).is_none())
            .collect();
        assert!(missing.is_empty(), "no text for {missing:?}");
        for (key, english, chinese) in TEXTS {
            assert!(!english.is_empty() && !chinese.is_empty(), "{key}");
        }
        assert_eq!(table().len(), TEXTS.len(), "a key is listed twice");
        assert_eq!(Tr(Lang::Zh).get("nav.nodes"), "计算节点");
        assert_eq!(Tr(Lang::En).pick("status", "failed"), "failed");
        assert_eq!(Tr(Lang::Zh).pick("state", "running"), "运行中");
        assert_eq!(Tr(Lang::Zh).pick("state", "migrating"), "migrating");
        assert_eq!(Lang::parse("zh-CN"), Some(Lang::Zh));
        assert_eq!(Lang::parse("fr"), None);
    }
}
