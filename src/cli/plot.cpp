// strata plot RUN_DIR...: draws the training loss (and evaluation loss where
// logged) of one or several runs from their metrics.jsonl into a PNG with gnuplot.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/commands.h"
#include "strata/core/error.h"

namespace strata::cli {

namespace fs = std::filesystem;

namespace {

struct PlotOptions {
  std::vector<std::string> runs;
  std::string output = "loss.png";
  std::string metric = "loss";
};

// Writes "step value" rows of `key` from a run's metrics.jsonl; returns the row count.
int64_t extract(const fs::path& metrics, const std::string& key, const fs::path& out) {
  std::ifstream in(metrics);
  STRATA_CHECK(in.good(), "plot: cannot read {}", metrics.string());
  std::ofstream rows(out);
  int64_t count = 0;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    STRATA_CHECK(!record.is_discarded(), "plot: {}:{}: not a JSON line", metrics.string(), number);
    if (record.contains(key) && record.contains("step")) {
      rows << record["step"].get<int64_t>() << ' ' << record[key].get<double>() << '\n';
      ++count;
    }
  }
  return count;
}

// The metric names a run's metrics.jsonl holds that start with `prefix`, sorted
// (for a metric given as "prefix*", such as "moe.1.expert_*": one curve per expert).
std::vector<std::string> keys_with_prefix(const fs::path& metrics, const std::string& prefix) {
  std::ifstream in(metrics);
  STRATA_CHECK(in.good(), "plot: cannot read {}", metrics.string());
  std::set<std::string> keys;
  for (std::string line; std::getline(in, line);) {
    nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    if (!record.is_object()) continue;
    for (const auto& item : record.items())
      if (item.key().starts_with(prefix) && item.value().is_number()) keys.insert(item.key());
  }
  return {keys.begin(), keys.end()};
}

void plot(const PlotOptions& o) {
  fs::path work = fs::temp_directory_path() / fmt::format("strata-plot-{}", ::getpid());
  fs::create_directories(work);
  std::string series;
  for (size_t i = 0; i < o.runs.size(); ++i) {
    fs::path metrics = fs::path(o.runs[i]) / "metrics.jsonl";
    std::string name = fs::path(o.runs[i]).filename().string();
    const bool pattern = o.metric.ends_with('*');
    const std::vector<std::string> keys = pattern ? keys_with_prefix(metrics, o.metric.substr(0, o.metric.size() - 1))
                                                  : std::vector<std::string>{o.metric, "eval_" + o.metric};
    for (const std::string& key : keys) {
      fs::path rows = work / fmt::format("{}-{}.dat", i, key);
      if (extract(metrics, key, rows) == 0) continue;
      series += fmt::format("{}'{}' using 1:2 with lines title '{} {}'", series.empty() ? "" : ", ", rows.string(), name, key);
    }
  }
  STRATA_CHECK(!series.empty(), "plot: no '{}' values in the metrics of {}", o.metric, fmt::join(o.runs, ", "));
  std::string script = fmt::format(
      "set terminal pngcairo noenhanced size 1000,600\nset output '{}'\nset xlabel 'step'\nset ylabel '{}'\nset grid\n"
      "set key outside\nplot {}\n",
      o.output, o.metric, series);
  std::unique_ptr<FILE, int (*)(FILE*)> gnuplot(popen("gnuplot 2>&1", "w"), pclose);
  STRATA_CHECK(gnuplot != nullptr, "plot: cannot start gnuplot (install the Debian package gnuplot-nox)");
  std::fputs(script.c_str(), gnuplot.get());
  int status = pclose(gnuplot.release());
  fs::remove_all(work);
  STRATA_CHECK(status == 0, "plot: gnuplot failed (exit status {}); is the Debian package gnuplot-nox installed?", status);
  fmt::print("wrote {}\n", o.output);
}

}  // namespace

void add_plot_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("plot", "Plot loss curves of one or several runs into a PNG (needs gnuplot)");
  auto options = std::make_shared<PlotOptions>();
  cmd->add_option("runs", options->runs, "Run folders")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("-o,--output", options->output, "PNG file to write");
  cmd->add_option("--metric", options->metric,
                  "Metric to plot (loss, accuracy, bits_per_byte, ...); a trailing * plots every metric with that "
                  "prefix (moe.1.expert_* : the expert shares of MoE block 1)");
  cmd->callback([options] { plot(*options); });
}

}  // namespace strata::cli
