// strata prepare DATASET: builds the dataset files a recipe reads.
//   bible_kjv                 the King James text (Debian bible-kjv) as byte tokens
//   text --input FILE         any text file as byte tokens
//   fashion_mnist             checks the Debian dataset-fashion-mnist files (read in place)
#include <memory>

#include "cli/commands.h"
#include "strata/core/error.h"
#include "strata/data/corpus.h"
#include "strata/data/fashion_mnist.h"

namespace strata::cli {

namespace {

struct PrepareOptions {
  std::string dataset;
  std::string input;
  std::string output;
  double validation_fraction = 0.1;
};

void print_summary(const data::CorpusSummary& s) {
  fmt::print("wrote {}: {} train bytes, {} validation bytes\n", s.folder, s.train_bytes, s.val_bytes);
}

void prepare(const PrepareOptions& o) {
  if (o.dataset == "bible_kjv") {
    print_summary(data::prepare_bible_kjv(o.output.empty() ? "data/generated/bible_kjv" : o.output,
                                          o.validation_fraction));
  } else if (o.dataset == "text") {
    STRATA_CHECK(!o.input.empty(), "prepare text: --input FILE is required");
    STRATA_CHECK(!o.output.empty(), "prepare text: --output FOLDER is required");
    print_summary(data::prepare_text_corpus(o.input, o.output, o.validation_fraction));
  } else {
    std::string folder = o.input.empty() ? "/usr/share/datasets/fashion-mnist" : o.input;
    for (data::Split split : {data::Split::Train, data::Split::Val}) {
      data::ImageSet images = data::read_fashion_mnist(folder, split);
      fmt::print("fashion_mnist {}: {} images in {}\n", data::split_name(split), images.labels.size(), folder);
    }
  }
}

}  // namespace

void add_prepare_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("prepare", "Build the files of a dataset (bible_kjv, text, fashion_mnist)");
  auto options = std::make_shared<PrepareOptions>();
  cmd->add_option("dataset", options->dataset, "Dataset name")
      ->required()
      ->check(CLI::IsMember({"bible_kjv", "text", "fashion_mnist"}));
  cmd->add_option("--input", options->input, "text: the text file; fashion_mnist: the folder of idx files");
  cmd->add_option("--output", options->output, "Folder to write (bible_kjv: data/generated/bible_kjv)");
  cmd->add_option("--validation-fraction", options->validation_fraction, "Share of the text held out")
      ->check(CLI::Range(0.0, 0.5));
  cmd->callback([options] { prepare(*options); });
}

}  // namespace strata::cli
