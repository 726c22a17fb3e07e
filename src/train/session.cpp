#include "train/session.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "strata/autograd/autograd.h"
#include "strata/checkpoint/h5file.h"
#include "strata/ops/ops.h"

namespace strata::train {

namespace fs = std::filesystem;

TrainSettings TrainSettings::read(const config::Config& c) {
  TrainSettings s;
  s.run_name = c.get<std::string>("run.name");
  s.run_dir = c.get<std::string>("run.dir", "runs/" + s.run_name);
  s.steps = c.get_positive<int64_t>("train.steps");
  s.batch_size = c.get_positive<int64_t>("train.batch_size");
  s.grad_accumulation = c.get_positive<int64_t>("train.grad_accumulation", 1);
  s.log_every = c.get_positive<int64_t>("train.log_every", 10);
  s.eval_every = c.get_in_range<int64_t>("train.eval_every", 0, INT64_MAX, 0);
  s.eval_batches = c.get_positive<int64_t>("eval.batches", 20);
  s.checkpoint_every = c.get_in_range<int64_t>("train.checkpoint_every", 0, INT64_MAX, 0);
  s.keep_checkpoints = c.get_positive<int64_t>("train.keep_checkpoints", 3);
  s.keep_best = c.get<bool>("train.keep_best", false);
  s.clip_grad_norm = c.get_in_range<double>("train.clip_grad_norm", 0.0, 1e30, 1.0);
  s.precision = c.get_choice("train.precision", {"float32", "bf16"}, std::string("float32"));
  s.on_nonfinite = c.get_choice("train.on_nonfinite", {"stop", "skip"}, std::string("stop"));
  s.seed = static_cast<uint64_t>(c.get_in_range<int64_t>("train.seed", 0, INT64_MAX, 0));
  return s;
}

namespace {

std::unique_ptr<optim::Optimizer> build_optimizer(const config::Config& c, const nn::Module& model) {
  std::string name = c.get_choice("optim.name", {"adamw", "sgd"}, std::string("adamw"));
  double lr = c.get_positive<double>("optim.lr");
  double weight_decay = c.get_in_range<double>("optim.weight_decay", 0.0, 1.0, name == "adamw" ? 0.1 : 0.0);
  if (name == "sgd") {
    optim::SGDOptions o;
    o.lr = lr;
    o.momentum = c.get_in_range<double>("optim.momentum", 0.0, 1.0, 0.9);
    o.weight_decay = weight_decay;
    o.nesterov = c.get<bool>("optim.nesterov", false);
    return std::make_unique<optim::SGD>(model.named_parameters(), o);
  }
  optim::AdamWOptions o;
  o.lr = lr;
  std::vector<double> betas = c.get<std::vector<double>>("optim.betas", {0.9, 0.95});
  STRATA_CHECK(betas.size() == 2 && betas[0] >= 0 && betas[0] < 1 && betas[1] >= 0 && betas[1] < 1,
               "optim.betas: expected two numbers in [0, 1)");
  o.beta1 = betas[0];
  o.beta2 = betas[1];
  o.eps = c.get_positive<double>("optim.eps", 1e-8);
  o.weight_decay = weight_decay;
  return std::make_unique<optim::AdamW>(model.named_parameters(), o);
}

optim::LearningRateSchedule build_schedule(const config::Config& c, double peak_lr, int64_t steps) {
  optim::LearningRateSchedule s;
  s.kind = optim::parse_schedule_kind(c.get_choice("schedule.kind", {"constant", "linear", "cosine"}, std::string("cosine")));
  s.warmup_steps = c.get_in_range<int64_t>("schedule.warmup_steps", 0, steps, std::min<int64_t>(100, steps / 10));
  s.total_steps = steps;
  s.peak_lr = peak_lr;
  s.min_lr = c.get_in_range<double>("schedule.min_lr", 0.0, peak_lr, peak_lr * 0.1);
  return s;
}

}  // namespace

Session build_session(config::Config config, Purpose purpose, const dist::LaunchInfo& launch) {
  Session s;
  s.config = std::move(config);
  const config::Config& c = s.config;
  s.settings = TrainSettings::read(c);
  dist::DataParallelOptions parallel = dist::DataParallelOptions::read(c);
  const bool distributed = purpose == Purpose::Train && launch.distributed();
  s.device = parse_device(c.get<std::string>("device", "auto"));
  if (distributed) s.device = dist::device_for_rank(s.device, launch);
  if (s.device.is_cuda()) cuda::set_device(s.device.index);

  Generator init_generator{s.settings.seed, 0};
  s.model = models::build_model(c, init_generator);
  s.model->to(s.device);
  s.optimizer = build_optimizer(c, *s.model);
  s.schedule = build_schedule(c, c.get_positive<double>("optim.lr"), s.settings.steps);

  s.eval_data = data::make_dataset(c, "data", data::Split::Val);
  if (purpose == Purpose::Train) {
    s.train_data = data::make_dataset(c, "data", data::Split::Train);
    s.loader = std::make_unique<data::Loader>(s.train_data, s.settings.batch_size, s.settings.seed, launch.rank,
                                              launch.world_size, true);
  }
  c.check_all_read();
  if (distributed) s.data_parallel = std::make_shared<dist::DataParallel>(launch, parallel, s.device);
  manual_seed(s.settings.seed + 1);  // dropout and other in-training draws
  return s;
}

Tensor batch_loss(models::Model& model, const data::Batch& batch, Device device) {
  Tensor logits = model.forward(batch.inputs.to(device));
  Tensor targets = batch.targets.to(device);
  int64_t classes = logits.size(-1);
  return ops::cross_entropy(ops::reshape(logits, {-1, classes}), ops::reshape(targets, {-1}));
}

Evaluation evaluate_model(Session& s, int64_t batches) {
  autograd::NoGradGuard no_grad;
  s.model->eval();
  data::Loader loader(s.eval_data, s.settings.batch_size, s.settings.seed, 0, 1, false);
  double loss_sum = 0;
  int64_t correct = 0, scored = 0;
  for (int64_t b = 0; b < batches; ++b) {
    data::Batch batch = loader.next();
    if (b % s.world_size() != s.rank()) continue;
    Tensor logits = s.model->forward(batch.inputs.to(s.device));
    int64_t classes = logits.size(-1);
    Tensor flat_logits = ops::reshape(logits, {-1, classes});
    Tensor flat_targets = ops::reshape(batch.targets, {-1});
    std::vector<int64_t> targets = flat_targets.to_vector<int64_t>();
    int64_t batch_scored = std::count_if(targets.begin(), targets.end(), [](int64_t t) { return t != -100; });
    double loss = ops::cross_entropy(flat_logits, flat_targets.to(s.device)).item();
    loss_sum += loss * static_cast<double>(batch_scored);
    std::vector<float> values = flat_logits.to(DType::Float32).to_vector<float>();
    for (size_t row = 0; row < targets.size(); ++row) {
      if (targets[row] == -100) continue;
      const float* r = values.data() + row * classes;
      correct += (std::max_element(r, r + classes) - r) == targets[row];
    }
    scored += batch_scored;
  }
  s.model->train();
  if (s.data_parallel) {
    std::vector<double> totals =
        s.data_parallel->sum({loss_sum, static_cast<double>(correct), static_cast<double>(scored)});
    loss_sum = totals[0];
    correct = static_cast<int64_t>(totals[1]);
    scored = static_cast<int64_t>(totals[2]);
  }
  Evaluation e;
  e.scored = scored;
  e.loss = scored ? loss_sum / static_cast<double>(scored) : 0.0;
  e.accuracy = scored ? static_cast<double>(correct) / static_cast<double>(scored) : -1;
  return e;
}

void save_checkpoint(const Session& s, const std::string& path, std::optional<double> eval_loss) {
  with_context("writing checkpoint " + path, [&] {
    checkpoint::H5Writer writer(path);
    for (const nn::NamedParameter& p : s.model->named_parameters()) writer.write_tensor("/model/" + p.name, p.tensor);
    for (const auto& [name, tensor] : s.optimizer->state()) writer.write_tensor("/optim/" + name, tensor);
    writer.write_int("/meta/step", s.step);
    writer.write_int("/meta/tokens_seen", s.tokens_seen);
    writer.write_int("/meta/world_size", s.world_size());
    writer.write_int("/meta/rng_seed", static_cast<int64_t>(default_generator().seed));
    writer.write_int("/meta/rng_offset", static_cast<int64_t>(default_generator().offset));
    data::LoaderState position = s.loader->state();
    writer.write_int("/meta/loader_epoch", position.epoch);
    writer.write_int("/meta/loader_position", position.position);
    writer.write_int("/meta/loader_seed", static_cast<int64_t>(position.seed));
    writer.write_string("/meta/config", s.config.to_yaml());
    writer.write_string("/meta/strata_version", STRATA_VERSION);
    if (eval_loss) writer.write_double("/meta/eval_loss", *eval_loss);
    writer.commit();
  });
}

void load_checkpoint(Session& s, const std::string& path, bool training_state) {
  with_context("loading checkpoint " + path, [&] {
    checkpoint::H5Reader reader(path);
    std::set<std::string> expected;
    for (const nn::NamedParameter& p : s.model->named_parameters()) {
      std::string name = "/model/" + p.name;
      expected.insert(name);
      STRATA_CHECK(reader.has(name), "parameter {} is missing from the checkpoint", p.name);
      Tensor stored = reader.read_tensor(name);
      STRATA_CHECK(stored.shape() == p.tensor.shape() && stored.dtype() == p.tensor.dtype(),
                   "parameter {}: the checkpoint has {}{}, the model has {}{}", p.name, dtype_name(stored.dtype()),
                   shape_str(stored.shape()), dtype_name(p.tensor.dtype()), shape_str(p.tensor.shape()));
      Tensor target = p.tensor;
      target.copy_(stored);
    }
    for (const std::string& name : reader.list("/model"))
      STRATA_CHECK(expected.count(name), "the checkpoint has {}, which the model does not", name);
    if (!training_state) {
      s.step = reader.read_int("/meta/step");
      return;
    }
    std::vector<std::pair<std::string, Tensor>> optimizer_state;
    for (const std::string& name : reader.list("/optim"))
      optimizer_state.emplace_back(name.substr(std::string("/optim/").size()), reader.read_tensor(name));
    s.optimizer->load_state(optimizer_state);
    s.step = reader.read_int("/meta/step");
    s.tokens_seen = reader.read_int("/meta/tokens_seen");
    default_generator() = Generator{static_cast<uint64_t>(reader.read_int("/meta/rng_seed")),
                                    static_cast<uint64_t>(reader.read_int("/meta/rng_offset"))};
    data::LoaderState saved{reader.read_int("/meta/loader_epoch"), reader.read_int("/meta/loader_position"),
                            static_cast<uint64_t>(reader.read_int("/meta/loader_seed"))};
    int64_t saved_world_size = reader.read_int("/meta/world_size");
    int64_t saved_batch_size = config::Config::from_yaml_string(reader.read_string("/meta/config"), path + ":/meta/config")
                                   .get<int64_t>("train.batch_size");
    dist::TranslatedPosition position = dist::translate_data_position(
        saved, saved_world_size, saved_world_size * saved_batch_size, s.world_size(),
        s.world_size() * s.settings.batch_size, s.loader->batches_per_epoch());
    s.loader->restore(position.state);
    if (!position.note.empty() && s.rank() == 0) fmt::print("{}\n", position.note);
  });
}

config::Config checkpoint_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::string yaml =
      with_context("reading checkpoint " + path, [&] { return checkpoint::H5Reader(path).read_string("/meta/config"); });
  config::Config c = config::Config::from_yaml_string(yaml, path + ":/meta/config");
  for (const std::string& o : overrides) {
    size_t eq = o.find('=');
    STRATA_CHECK(eq != std::string::npos && eq > 0, "override '{}': expected key.path=value", o);
    c.set(o.substr(0, eq), o.substr(eq + 1));
  }
  return c;
}

std::string newest_checkpoint(const std::string& run_dir) {
  fs::path folder = fs::path(run_dir) / "checkpoints";
  if (!fs::is_directory(folder)) return "";
  std::vector<std::string> candidates;
  for (const auto& entry : fs::directory_iterator(folder)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("step_", 0) == 0 && entry.path().extension() == ".h5") candidates.push_back(entry.path().string());
  }
  std::sort(candidates.rbegin(), candidates.rend());  // zero-padded step numbers sort by step
  for (const std::string& candidate : candidates) {
    try {
      checkpoint::H5Reader reader(candidate);
      reader.read_int("/meta/step");
      return candidate;
    } catch (const Error& e) {
      fmt::print(stderr, "skipping unreadable checkpoint {}: {}\n", candidate, e.what());
    }
  }
  return "";
}

}  // namespace strata::train
