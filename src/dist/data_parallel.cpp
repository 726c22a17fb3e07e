#include "strata/dist/data_parallel.h"

#include <unistd.h>

#include <cstring>

namespace strata::dist {

namespace {

// FNV-1a: the same text hashes the same in every process (std::hash need not).
uint64_t fnv1a(const std::string& text) {
  uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash;
}

int64_t as_int64(uint64_t bits) {
  int64_t value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// One rank's line of the rank table, as fixed-size bytes for all_gather.
struct RankRecord {
  int64_t pid;
  int64_t local_rank;
  char host[64];
  char device[32];
};

}  // namespace

DataParallelOptions DataParallelOptions::read(const config::Config& config) {
  DataParallelOptions o;
  o.backend = config.get_choice("dist.backend", {"auto", "nccl", "gloo"}, std::string("auto"));
  o.timeout_seconds = config.get_in_range<double>("dist.timeout_s", 1.0, 1e6, 300.0);
  o.bucket_megabytes = config.get_in_range<double>("dist.bucket_mb", 0.001, 1e5, 25.0);
  return o;
}

Device device_for_rank(Device requested, const LaunchInfo& launch) {
  if (!launch.distributed() || !requested.is_cuda()) return requested;
  int visible = cuda_device_count();
  if (launch.local_rank < visible) return Device::cuda(launch.local_rank);
  // The launcher gave each rank a GPU of its own (CUDA_VISIBLE_DEVICES, srun --gpus-per-task).
  if (visible == 1) return Device::cuda(0);
  STRATA_FAIL("data parallel: local rank {} would train on cuda:{}, but this process sees {} CUDA device(s)",
              launch.local_rank, launch.local_rank, visible);
}

ConnectOptions connect_options(const LaunchInfo& launch, const DataParallelOptions& options, Device device) {
  ConnectOptions o;
  o.backend = options.backend;
  o.rank = launch.rank;
  o.world_size = launch.world_size;
  o.device = device;
  o.master_addr = launch.master_addr;
  o.store_port = launch.store_port;
  o.rendezvous_dir = launch.rendezvous_dir;
  o.run_id = launch.run_id;
  if (const char* interface = std::getenv("GLOO_SOCKET_IFNAME")) o.interface = interface;
  o.timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_seconds * 1000));
  return o;
}

DataParallel::DataParallel(const LaunchInfo& launch, const DataParallelOptions& options, Device device)
    : launch_(launch), options_(options), communicator_(connect(connect_options(launch, options, device))) {}

void DataParallel::check_consistency(const std::string& config_yaml,
                                     const std::vector<nn::NamedParameter>& parameters, int64_t step) {
  std::string layout;
  for (const nn::NamedParameter& p : parameters)
    layout += fmt::format("{} {}{};", p.name, dtype_name(p.tensor.dtype()), shape_str(p.tensor.shape()));
  std::vector<int64_t> mine{as_int64(fnv1a(config_yaml)), as_int64(fnv1a(layout)), step};
  Device device = communicator_->device();
  Tensor all = Tensor::zeros({3 * static_cast<int64_t>(world_size())}, DType::Int64, device);
  communicator_->all_gather(Tensor::from_vector<int64_t>(mine, {3}, device), all);
  std::vector<int64_t> values = all.to_vector<int64_t>();
  std::vector<int> recipe_differs, parameters_differ, step_differs;
  for (int r = 1; r < world_size(); ++r) {
    if (values[3 * r] != values[0]) recipe_differs.push_back(r);
    if (values[3 * r + 1] != values[1]) parameters_differ.push_back(r);
    if (values[3 * r + 2] != values[2]) step_differs.push_back(r);
  }
  STRATA_CHECK(recipe_differs.empty(),
               "data parallel: the resolved recipe of rank(s) {} differs from rank 0's (every rank must run the same "
               "recipe with the same overrides)",
               fmt::join(recipe_differs, ", "));
  STRATA_CHECK(parameters_differ.empty(),
               "data parallel: the model parameters (names, dtypes, shapes) of rank(s) {} differ from rank 0's",
               fmt::join(parameters_differ, ", "));
  STRATA_CHECK(step_differs.empty(),
               "data parallel: rank(s) {} start at another step than rank 0 (step {}); do all ranks see the same run "
               "folder and checkpoints?",
               fmt::join(step_differs, ", "), values[2]);
}

std::string DataParallel::rank_table() {
  RankRecord mine{};
  mine.pid = ::getpid();
  mine.local_rank = launch_.local_rank;
  ::gethostname(mine.host, sizeof mine.host - 1);
  std::snprintf(mine.device, sizeof mine.device, "%s", communicator_->device().str().c_str());
  std::vector<uint8_t> bytes(sizeof mine);
  std::memcpy(bytes.data(), &mine, sizeof mine);
  Device device = communicator_->device();
  Tensor all = Tensor::zeros({static_cast<int64_t>(sizeof mine) * world_size()}, DType::UInt8, device);
  communicator_->all_gather(Tensor::from_vector<uint8_t>(bytes, {static_cast<int64_t>(bytes.size())}, device), all);
  std::vector<uint8_t> gathered = all.to_vector<uint8_t>();
  std::string table = fmt::format(
      "data parallel: {} ranks over {} (ranks from {}; rendezvous {}), gradient buckets of {} MiB\n"
      "  rank  local  host                      pid  device\n",
      world_size(), communicator_->backend(), launch_.source,
      launch_.rendezvous_dir.empty() ? fmt::format("tcp://{}:{}", launch_.master_addr, launch_.store_port)
                                     : "file://" + launch_.rendezvous_dir,
      options_.bucket_megabytes);
  for (int r = 0; r < world_size(); ++r) {
    RankRecord record;
    std::memcpy(&record, gathered.data() + r * sizeof record, sizeof record);
    record.host[sizeof record.host - 1] = record.device[sizeof record.device - 1] = '\0';
    table += fmt::format("  {:>4}  {:>5}  {:<20}  {:>8}  {}\n", r, record.local_rank, record.host, record.pid,
                         record.device);
  }
  return table;
}

void DataParallel::broadcast_parameters(const std::vector<nn::NamedParameter>& parameters) {
  for (const nn::NamedParameter& p : parameters) {
    Tensor values = p.tensor;
    communicator_->broadcast(values, 0);
  }
}

void DataParallel::attach(const std::vector<Tensor>& parameters) {
  STRATA_CHECK(reducer_ == nullptr, "DataParallel::attach: the gradient reducer is already attached");
  int64_t bucket_bytes = std::max<int64_t>(1, static_cast<int64_t>(options_.bucket_megabytes * (1 << 20)));
  reducer_ = std::make_unique<GradientReducer>(parameters, communicator_, bucket_bytes);
}

TranslatedPosition translate_data_position(const data::LoaderState& saved, int64_t saved_world_size,
                                           int64_t saved_global_batch, int64_t world_size, int64_t global_batch,
                                           int64_t batches_per_epoch) {
  TranslatedPosition t{saved, ""};
  if (saved_global_batch == global_batch) {
    if (saved_world_size != world_size)
      t.note = fmt::format("resuming a checkpoint of {} rank(s) on {}: the global batch is still {} examples, so the "
                           "data position (epoch {}, batch {}) carries over",
                           saved_world_size, world_size, global_batch, saved.epoch, saved.position);
    return t;
  }
  int64_t seen = saved.position * saved_global_batch;  // examples of this epoch already trained on
  t.state.position = seen / global_batch;
  int64_t replayed = seen - t.state.position * global_batch;
  t.note = fmt::format(
      "resuming a checkpoint of {} rank(s) (global batch {}) on {} rank(s) (global batch {}): the data position in "
      "epoch {} goes from batch {} to batch {}{}",
      saved_world_size, saved_global_batch, world_size, global_batch, saved.epoch, saved.position, t.state.position,
      replayed ? fmt::format(" ({} examples of the epoch are seen again)", replayed) : std::string());
  if (t.state.position >= batches_per_epoch) {  // the rest of the epoch is less than one new global batch
    t.state.position = 0;
    ++t.state.epoch;
    t.note += fmt::format("; what is left of the epoch is less than one global batch, so epoch {} begins",
                          t.state.epoch);
  }
  return t;
}

}  // namespace strata::dist
