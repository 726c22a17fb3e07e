// The training loop: micro-batches with gradient accumulation, bf16 autocast on
// CUDA when the recipe asks, global-norm clipping, the learning-rate schedule,
// periodic evaluation and checkpoints, a progress line, metrics.jsonl, and a
// graceful stop on SIGINT/SIGTERM (finish the step, checkpoint, exit 0).
//
// Data parallelism (src/dist): every rank runs this loop on its shard of each
// global batch; gradients are averaged while the backward pass runs, the loss and
// the stop decision are agreed each step, and only rank 0 prints progress and
// writes metrics.jsonl and checkpoints, while every rank logs to rank<k>.log.
#include "strata/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <nlohmann/json.hpp>

#include "strata/autograd/autograd.h"
#include "strata/ops/ops.h"
#include "strata/optim/grad_clip.h"
#include "train/session.h"

namespace strata::train {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::atomic<int> stop_signal{0};

void on_stop_signal(int signal) { stop_signal.store(signal); }

// Installed for the duration of a run; the previous handlers come back afterwards.
class StopSignals {
 public:
  StopSignals() {
    stop_signal.store(0);
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_int_);
    sigaction(SIGTERM, &action, &previous_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &previous_int_, nullptr);
    sigaction(SIGTERM, &previous_term_, nullptr);
  }

 private:
  struct sigaction previous_int_ {}, previous_term_ {};
};

std::string checkpoint_path(const Session& s, int64_t step) {
  return fmt::format("{}/checkpoints/step_{:08d}.h5", s.settings.run_dir, step);
}

// Keeps the newest `keep` checkpoints (and the best one when asked).
void prune_checkpoints(const Session& s, const std::string& best) {
  std::vector<std::string> all;
  for (const auto& entry : fs::directory_iterator(fs::path(s.settings.run_dir) / "checkpoints"))
    if (entry.path().extension() == ".h5") all.push_back(entry.path().string());
  std::sort(all.rbegin(), all.rend());
  for (size_t i = static_cast<size_t>(s.settings.keep_checkpoints); i < all.size(); ++i)
    if (all[i] != best) fs::remove(all[i]);
}

std::string format_duration(double seconds) {
  int64_t total = static_cast<int64_t>(seconds);
  return total >= 3600 ? fmt::format("{}h{:02d}m", total / 3600, total % 3600 / 60)
                       : fmt::format("{}m{:02d}s", total / 60, total % 60);
}

// Appends lines to a file, flushed as written; an empty path discards them (the
// files a rank other than 0 does not keep).
class LineLog {
 public:
  explicit LineLog(const std::string& path) {
    if (path.empty()) return;
    out_.open(path, std::ios::app);
    STRATA_CHECK(out_.good(), "cannot open {} for writing", path);
  }
  void write(const std::string& line) {
    if (!out_.is_open()) return;
    out_ << line << '\n';
    out_.flush();
  }

 private:
  std::ofstream out_;
};

class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path) : log_(path) {}
  void write(const nlohmann::json& record) { log_.write(record.dump()); }

 private:
  LineLog log_;
};

// A data-parallel rank's own account, runs/<name>/rank<k>.log, each line timestamped.
class RankLog {
 public:
  explicit RankLog(const std::string& path) : log_(path) {}
  void write(const std::string& line) {
    std::time_t now = std::time(nullptr);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
    log_.write(fmt::format("{}  {}", stamp, line));
  }

 private:
  LineLog log_;
};

// The metrics an evaluation adds: loss, and bits per byte for byte-level language
// models or accuracy where positions are scored as answers.
nlohmann::json evaluation_record(const Session& s, const Evaluation& e) {
  nlohmann::json r = {{"eval_loss", e.loss}};
  if (s.model->task() == models::Task::LanguageModel) {
    r["eval_perplexity"] = std::exp(e.loss);
    if (s.config.get<int64_t>("model.vocab_size", 256) == 256) r["eval_bits_per_byte"] = e.loss / std::log(2.0);
  }
  if (e.accuracy >= 0) r["eval_accuracy"] = e.accuracy;
  return r;
}

int run(Session& s, bool resumed) {
  const TrainSettings& t = s.settings;
  dist::DataParallel* parallel = s.data_parallel.get();
  const bool lead = s.rank() == 0;
  std::string opening = fmt::format("run {}: {} parameters on {}, {} steps from step {}", t.run_name,
                                    s.model->num_parameters(), s.device.str(), t.steps, s.step);
  if (lead) fmt::print("{}\n", opening);
  std::fflush(stdout);
  std::vector<Tensor> parameters = s.model->parameters();
  if (parallel) {
    // Before anything is written: every rank must run the same recipe and model.
    parallel->check_consistency(s.config.to_yaml(), s.model->named_parameters(), s.step);
    std::string table = parallel->rank_table();
    if (lead) fmt::print("{}", table);
    std::fflush(stdout);
    parallel->broadcast_parameters(s.model->named_parameters());
    parallel->attach(parameters);
  }

  fs::create_directories(fs::path(t.run_dir) / "checkpoints");
  if (!resumed && lead) {
    std::ofstream(fs::path(t.run_dir) / "config.yaml") << s.config.to_yaml();
  }
  MetricsLog metrics(lead ? (fs::path(t.run_dir) / "metrics.jsonl").string() : "");
  RankLog rank_log(parallel ? fmt::format("{}/rank{}.log", t.run_dir, s.rank()) : "");
  rank_log.write(fmt::format("rank {} of {}: {}", s.rank(), s.world_size(), opening));
  bool interactive = isatty(STDOUT_FILENO);

  StopSignals signals;
  std::optional<double> best_eval;
  std::string best_path;
  auto start = Clock::now();
  int64_t start_step = s.step;
  int64_t tokens_at_log = s.tokens_seen;
  auto last_log = start;
  s.model->train();

  while (s.step < t.steps) {
    double lr = s.schedule.lr(s.step);
    s.optimizer->set_lr(lr);
    s.model->zero_grad();
    double loss_sum = 0, auxiliary_sum = 0;
    for (int64_t micro = 0; micro < t.grad_accumulation; ++micro) {
      data::Batch batch = s.loader->next();
      std::optional<ops::AutocastGuard> autocast;
      if (t.precision == "bf16" && s.device.is_cuda()) autocast.emplace(DType::BFloat16);
      Tensor loss = batch_loss(*s.model, batch, s.device);
      // Models with auxiliary objectives (MoE load balancing, router z-loss) add them here.
      Tensor auxiliary = s.model->auxiliary_loss();
      Tensor objective = auxiliary.defined() ? ops::add(loss, auxiliary) : loss;
      autocast.reset();
      Tensor scaled =
          t.grad_accumulation > 1 ? ops::mul(objective, 1.0 / static_cast<double>(t.grad_accumulation)) : objective;
      // Only the last micro-batch's backward pass communicates.
      if (parallel) parallel->prepare_backward(micro + 1 == t.grad_accumulation);
      autograd::backward(scaled);
      loss_sum += loss.item();
      if (auxiliary.defined()) auxiliary_sum += auxiliary.item();
      s.tokens_seen += batch.targets.numel() * s.world_size();
    }
    if (parallel) parallel->finish_backward();
    double loss = loss_sum / static_cast<double>(t.grad_accumulation);
    double local_loss = loss;
    // Every rank must stop at the same step: a signal that reached any rank stops all.
    bool stopping = stop_signal.load() != 0;
    if (parallel) {
      std::vector<double> totals = parallel->sum({loss, stopping ? 1.0 : 0.0});
      loss = totals[0] / static_cast<double>(s.world_size());
      stopping = totals[1] > 0;
    }
    double grad_norm = optim::clip_grad_norm(parameters, t.clip_grad_norm > 0 ? t.clip_grad_norm : INFINITY);
    ++s.step;
    if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
      STRATA_CHECK(t.on_nonfinite == "skip",
                   "non-finite {} at step {} (loss {}, gradient norm {}); set train.on_nonfinite: skip to skip such steps",
                   std::isfinite(loss) ? "gradient" : "loss", s.step, loss, grad_norm);
      if (lead) fmt::print(stderr, "step {}: non-finite loss or gradient, step skipped\n", s.step);
      metrics.write({{"step", s.step}, {"skipped", true}});
    } else {
      s.optimizer->step();
    }

    if (s.step % t.log_every == 0 || s.step == t.steps) {
      auto now = Clock::now();
      double elapsed = std::chrono::duration<double>(now - last_log).count();
      double tokens_per_second = static_cast<double>(s.tokens_seen - tokens_at_log) / std::max(elapsed, 1e-9);
      double total_elapsed = std::chrono::duration<double>(now - start).count();
      double eta = total_elapsed / static_cast<double>(s.step - start_step) * static_cast<double>(t.steps - s.step);
      int64_t memory = s.device.is_cuda() ? memory_stats(s.device).peak_bytes : 0;
      // Targets per second: tokens for language models, samples for classifiers.
      bool per_token = s.model->task() == models::Task::LanguageModel;
      nlohmann::json record = {{"step", s.step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                               {per_token ? "tokens_per_second" : "samples_per_second", tokens_per_second},
                               {per_token ? "tokens_seen" : "samples_seen", s.tokens_seen},
                               {"peak_memory_bytes", memory}, {"elapsed_seconds", total_elapsed}};
      if (auxiliary_sum != 0) record["auxiliary_loss"] = auxiliary_sum / static_cast<double>(t.grad_accumulation);
      for (const auto& [name, value] : s.model->metrics()) record[name] = value;
      if (parallel) {
        // Per step: the gradient all-reduces' time and the part the backward pass did not hide.
        dist::GradientReducer::Stats c = parallel->take_stats();
        double passes = static_cast<double>(std::max<int64_t>(c.passes, 1));
        record["communication_ms"] = c.communication_ms / passes;
        record["exposed_communication_ms"] = c.exposed_ms / passes;
        record["hidden_communication_fraction"] =
            c.communication_ms > 0 ? 1.0 - std::min(c.exposed_ms, c.communication_ms) / c.communication_ms : 1.0;
        rank_log.write(fmt::format("step {}: loss here {:.6f}, over all ranks {:.6f}, grad norm {:.6f}, "
                                   "all-reduce {:.2f} ms/step ({:.2f} ms not hidden)",
                                   s.step, local_loss, loss, grad_norm, c.communication_ms / passes,
                                   c.exposed_ms / passes));
      }
      metrics.write(record);
      std::string line = fmt::format("step {}/{}  loss {:.4f}  lr {:.2e}  {:.0f} {}/s{}  eta {}", s.step, t.steps, loss,
                                     lr, tokens_per_second, per_token ? "tok" : "samples",
                                     memory ? fmt::format("  mem {:.2f} GiB", static_cast<double>(memory) / (1 << 30)) : "",
                                     format_duration(eta));
      if (lead && interactive) {
        fmt::print("\r\033[K{}", line);
      } else if (lead) {
        fmt::print("{}\n", line);
      }
      std::fflush(stdout);
      last_log = now;
      tokens_at_log = s.tokens_seen;
    }

    std::optional<double> eval_loss;
    if ((t.eval_every > 0 && s.step % t.eval_every == 0) || s.step == t.steps) {
      Evaluation e = evaluate_model(s, t.eval_batches);
      nlohmann::json record = evaluation_record(s, e);
      record["step"] = s.step;
      metrics.write(record);
      if (lead) fmt::print("{}step {}: {}\n", interactive ? "\n" : "", s.step, record.dump());
      std::fflush(stdout);
      rank_log.write(fmt::format("step {}: {}", s.step, record.dump()));
      eval_loss = e.loss;
    }

    if (!parallel) stopping = stop_signal.load() != 0;  // alone, a signal during evaluation counts too
    if (lead && ((t.checkpoint_every > 0 && s.step % t.checkpoint_every == 0) || s.step == t.steps || stopping)) {
      std::string path = checkpoint_path(s, s.step);
      save_checkpoint(s, path, eval_loss);
      rank_log.write("checkpoint " + path);
      if (t.keep_best && eval_loss && (!best_eval || *eval_loss < *best_eval)) {
        best_eval = eval_loss;
        best_path = path;
      }
      prune_checkpoints(s, best_path);
    }
    if (stopping) {
      int signal = stop_signal.load();
      std::string line =
          fmt::format("stopped by {} at step {}; checkpoint written; resume with: strata resume {}",
                      signal ? fmt::format("signal {}", signal) : std::string("a signal to another rank"), s.step,
                      t.run_dir);
      if (lead) fmt::print("{}{}\n", interactive ? "\n" : "", line);
      rank_log.write(line);
      return 0;
    }
  }
  if (lead) fmt::print("{}done: {} steps, checkpoint {}\n", interactive ? "\n" : "", s.step, checkpoint_path(s, s.step));
  rank_log.write(fmt::format("done: {} steps", s.step));
  return 0;
}

void print_dry_run(Session& s) {
  int64_t parameters = s.model->num_parameters();
  // Measured, not guessed: what one sample's forward pass keeps for the backward
  // (on the CPU), times the batch size, plus float32 weights, gradients and
  // optimizer state. Sequences are probed at no more than kProbeLength positions
  // (a long one on the CPU would take minutes) and scaled linearly to the full
  // length: exact for the fused kernels and the scans, whose saved state grows
  // linearly, an underestimate where attention scores are materialised.
  constexpr int64_t kProbeLength = 128;
  int64_t optimizer_bytes = 0;
  for (const auto& [name, tensor] : s.optimizer->state())
    optimizer_bytes += tensor.numel() * static_cast<int64_t>(tensor.element_size());
  data::Loader one(s.eval_data, 1, s.settings.seed, 0, 1, false);
  data::Batch sample = one.next();
  double scale = 1.0;
  if (s.model->task() == models::Task::LanguageModel && sample.inputs.size(1) > kProbeLength) {
    scale = static_cast<double>(sample.inputs.size(1)) / kProbeLength;
    sample.inputs = ops::slice(sample.inputs, 1, 0, kProbeLength).contiguous();
    sample.targets = ops::slice(sample.targets, 1, 0, kProbeLength).contiguous();
  }
  Device cpu = Device::cpu();
  s.model->to(cpu);
  int64_t before = memory_stats(cpu).current_bytes;
  Tensor loss = batch_loss(*s.model, sample, cpu);
  double activations = static_cast<double>(memory_stats(cpu).current_bytes - before) * scale *
                       static_cast<double>(s.settings.batch_size);
  autograd::backward(loss);
  s.model->zero_grad();
  double gib = 1 << 30;
  double weights = static_cast<double>(parameters) * 4;
  double total = weights * 2 + static_cast<double>(optimizer_bytes) + activations;
  fmt::print("recipe {} is valid\nmodel: {} ({} parameters)\nmemory estimate for batch {} on {}: {:.3f} GiB "
             "(weights {:.3f}, gradients {:.3f}, optimizer {:.3f}, activations {:.3f}{})\n",
             s.settings.run_name, s.config.get<std::string>("model.family"), parameters, s.settings.batch_size,
             s.device.str(), total / gib, weights / gib, weights / gib, static_cast<double>(optimizer_bytes) / gib,
             activations / gib, scale > 1 ? fmt::format(", measured at length {} and scaled", kProbeLength) : "");
}

}  // namespace

int train(const TrainCommand& command) {
  config::Config config = config::Config::load(command.recipe, command.overrides);
  // A dry run only validates: it joins no other ranks.
  dist::LaunchInfo launch = command.dry_run ? dist::LaunchInfo{} : dist::resolve_launch();
  Session session = with_context("loading recipe " + command.recipe, [&] {
    return build_session(std::move(config), Purpose::Train, launch);
  });
  if (command.dry_run) {
    print_dry_run(session);
    return 0;
  }
  std::string from = command.resume;
  if (from == "auto") from = newest_checkpoint(session.settings.run_dir);
  if (!from.empty()) {
    load_checkpoint(session, from, true);
    if (session.rank() == 0) fmt::print("resumed from {} at step {}\n", from, session.step);
  }
  return run(session, !from.empty());
}

int resume(const std::string& run_dir, const std::vector<std::string>& overrides) {
  std::string from = newest_checkpoint(run_dir);
  STRATA_CHECK(!from.empty(), "resume: no readable checkpoint in {}/checkpoints", run_dir);
  Session session = build_session(checkpoint_config(from, overrides), Purpose::Train, dist::resolve_launch());
  load_checkpoint(session, from, true);
  if (session.rank() == 0) fmt::print("resumed from {} at step {}\n", from, session.step);
  return run(session, true);
}

int evaluate(const EvalCommand& command) {
  Session session = build_session(checkpoint_config(command.checkpoint, command.overrides), Purpose::Evaluate);
  load_checkpoint(session, command.checkpoint, false);
  int64_t batches = command.batches > 0 ? command.batches : session.settings.eval_batches;
  Evaluation e = evaluate_model(session, batches);
  nlohmann::json record = evaluation_record(session, e);
  record["step"] = session.step;
  record["checkpoint"] = command.checkpoint;
  record["scored_targets"] = e.scored;
  fmt::print("{}\n", record.dump());
  return 0;
}

int generate(const GenerateCommand& command) {
  Session session = build_session(checkpoint_config(command.checkpoint, {}), Purpose::Evaluate);
  load_checkpoint(session, command.checkpoint, false);
  STRATA_CHECK(session.model->task() == models::Task::LanguageModel, "generate: {} is not a language model",
               command.checkpoint);
  STRATA_CHECK(command.temperature >= 0, "generate: --temperature must be >= 0, got {}", command.temperature);
  autograd::NoGradGuard no_grad;
  session.model->eval();
  std::vector<int64_t> tokens(command.prompt.begin(), command.prompt.end());
  for (int64_t& t : tokens) t = static_cast<unsigned char>(t);
  if (tokens.empty()) tokens.push_back('\n');
  Generator generator{command.seed, 0};
  fmt::print("{}", command.prompt);
  // Recurrent models step through the prompt once and then carry their state, one
  // token at a time; the others re-read the (cropped) context for every token.
  std::unique_ptr<models::DecodingState> decoding = session.model->start_decoding(1);
  auto decode = [&](int64_t token) {
    Tensor logits = session.model->decode(Tensor::from_vector<int64_t>({token}, {1}, session.device), *decoding);
    return logits.to(DType::Float32).to_vector<float>();
  };
  std::vector<float> last;
  if (decoding)
    for (int64_t token : tokens) last = decode(token);
  int64_t context = session.model->max_length() > 0 ? session.model->max_length() : INT64_MAX;
  for (int64_t i = 0; i < command.max_new_tokens; ++i) {
    if (!decoding) {
      size_t first = tokens.size() > static_cast<size_t>(context) ? tokens.size() - context : 0;
      std::vector<int64_t> window(tokens.begin() + static_cast<int64_t>(first), tokens.end());
      Tensor input = Tensor::from_vector(window, {1, static_cast<int64_t>(window.size())}, session.device);
      Tensor logits = session.model->forward(input);
      last = ops::slice(ops::reshape(logits, {-1, logits.size(-1)}), 0, -1, INT64_MAX).to(DType::Float32).to_vector<float>();
    }
    int64_t vocab = static_cast<int64_t>(last.size());
    int64_t next;
    if (command.temperature == 0) {
      next = std::max_element(last.begin(), last.end()) - last.begin();
    } else {
      // Keep the top-k logits, soften by the temperature, sample by inverse CDF.
      std::vector<int64_t> order(vocab);
      std::iota(order.begin(), order.end(), 0);
      int64_t k = command.top_k > 0 ? std::min(command.top_k, vocab) : vocab;
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) { return last[a] > last[b]; });
      std::vector<double> weights(k);
      for (int64_t j = 0; j < k; ++j) weights[j] = std::exp((last[order[j]] - last[order[0]]) / command.temperature);
      double u = rand_uniform({1}, 0.0, 1.0, DType::Float64, Device::cpu(), generator).item() *
                 std::accumulate(weights.begin(), weights.end(), 0.0);
      int64_t j = 0;
      for (double running = weights[0]; running < u && j + 1 < k; running += weights[++j]) {
      }
      next = order[j];
    }
    tokens.push_back(next);
    fmt::print("{}", static_cast<char>(next));
    std::fflush(stdout);
    if (decoding && i + 1 < command.max_new_tokens) last = decode(next);
  }
  fmt::print("\n");
  return 0;
}

}  // namespace strata::train
