// Models: one file per family in src/models/, registered by the name a recipe
// gives in `model.family`. A model reads its hyper-parameters from the recipe's
// `model` section (validated there) and maps a batch's inputs to logits.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "strata/config/config.h"
#include "strata/core/rng.h"
#include "strata/nn/module.h"

namespace strata::models {

enum class Task { LanguageModel, Classifier };

// What a recurrent language model carries from one decoded token to the next (its
// layers' states). Each model defines its own; the caller only passes it back.
class DecodingState {
 public:
  virtual ~DecodingState() = default;
};

class Model : public nn::Module {
 public:
  // Language models: tokens (batch, length) int64 -> logits (batch, length, vocab).
  // Classifiers: inputs (batch, ...) -> logits (batch, classes).
  virtual Tensor forward(const Tensor& inputs) = 0;
  virtual Task task() const = 0;
  // Language models: the longest context the model accepts (generation crops to
  // it); 0 when there is no limit.
  virtual int64_t max_length() const { return 0; }

  // A scalar the trainer adds to the task loss after each forward pass (the
  // weighted load-balancing and z-losses of mixture-of-experts layers, computed by
  // that pass and differentiable); undefined when the model has none.
  virtual Tensor auxiliary_loss() { return Tensor(); }
  // Named values describing the last forward pass (expert usage per MoE layer, ...)
  // for the metrics log; read back from the device, so call them when logging.
  virtual std::vector<std::pair<std::string, double>> metrics() { return {}; }

  // Token-by-token decoding with memory constant in the sequence length, for
  // language models that have it (recurrent ones). start_decoding returns the state
  // before the first token of `batch` sequences, or nullptr when the model cannot
  // decode this way (then generation re-reads the context for every token).
  // decode reads tokens_t (batch) int64 on the model's device, advances `state` by
  // that position and returns the logits for the next token (batch, vocab); feeding
  // a sequence position by position gives the rows of forward's logits. Both run
  // under autograd::NoGradGuard.
  virtual std::unique_ptr<DecodingState> start_decoding(int64_t batch) { return nullptr; }
  virtual Tensor decode(const Tensor& tokens_t, DecodingState& state) {
    STRATA_FAIL("decode: this model has no token-by-token decoding (start_decoding returned nullptr)");
  }
};

using ModelFactory = std::function<std::shared_ptr<Model>(const config::Config& config, Generator& generator)>;

// Registers a family at static-initialisation time: `static const bool registered =
// register_family("transformer", ...)`.
bool register_family(const std::string& name, ModelFactory factory);
std::vector<std::string> families();
// Builds the model named by `model.family`, initialised from `generator` on the CPU.
std::shared_ptr<Model> build_model(const config::Config& config, Generator& generator);

}  // namespace strata::models
