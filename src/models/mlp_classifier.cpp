// A multilayer perceptron classifier over flattened inputs (e.g. Fashion-MNIST's
// 28x28 images): the smallest model that exercises the image data path.
//
// Recipe keys (section `model`): input_size, num_classes, hidden (list of layer
// widths), activation (gelu | relu | silu), dropout.
#include "strata/models/model.h"
#include "strata/nn/layers.h"
#include "strata/ops/ops.h"

namespace strata::models {
namespace {

class MLPClassifier : public Model {
 public:
  MLPClassifier(const config::Config& c, Generator& generator)
      : input_size_(c.get_positive<int64_t>("model.input_size")),
        activation_(nn::parse_activation(c.get_choice("model.activation", {"gelu", "relu", "silu"}, std::string("gelu")))),
        dropout_(c.get_in_range<double>("model.dropout", 0.0, 0.99, 0.0)) {
    std::vector<int64_t> widths = c.get<std::vector<int64_t>>("model.hidden", {256});
    int64_t classes = c.get_positive<int64_t>("model.num_classes");
    layers_ = register_module("layers", std::make_shared<nn::ModuleList>());
    int64_t in = input_size_;
    for (int64_t width : widths) {
      STRATA_CHECK(width > 0, "model.hidden: layer widths must be positive, got {}", width);
      layers_->push_back(std::make_shared<nn::Linear>(in, width, true, generator));
      in = width;
    }
    layers_->push_back(std::make_shared<nn::Linear>(in, classes, true, generator));
  }

  // inputs (batch, ...) with input_size values per example -> logits (batch, classes)
  Tensor forward(const Tensor& inputs) override {
    Tensor x = ops::reshape(inputs, {inputs.size(0), -1});
    STRATA_CHECK(x.size(1) == input_size_, "mlp_classifier: inputs {} have {} values per example, model.input_size is {}",
                 inputs.str(), x.size(1), input_size_);
    for (size_t i = 0; i < layers_->size(); ++i) {
      x = layers_->get<nn::Linear>(i)->forward(x);
      if (i + 1 < layers_->size()) x = ops::dropout(nn::activate(x, activation_), dropout_, is_training());
    }
    return x;
  }

  Task task() const override { return Task::Classifier; }

 private:
  int64_t input_size_;
  nn::Activation activation_;
  double dropout_;
  std::shared_ptr<nn::ModuleList> layers_;
};

const bool registered = register_family("mlp_classifier", [](const config::Config& c, Generator& generator) {
  return std::make_shared<MLPClassifier>(c, generator);
});

}  // namespace
}  // namespace strata::models
