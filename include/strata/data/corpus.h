// Byte-level text corpora. A prepared corpus is a folder of three files:
//   train.bin, val.bin   the raw bytes (uint8; the vocabulary is the 256 byte values)
//   meta.json            {"format": "strata-byte-corpus", "version": 1, "source": ...,
//                         "train_bytes": n, "val_bytes": m, "vocab_size": 256}
// The validation split is the last `validation_fraction` of the text. Files are
// written under temporary names and renamed, meta.json last, so a folder with a
// meta.json is complete.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "strata/data/dataset.h"

namespace strata::data {

struct CorpusSummary {
  std::string folder;
  int64_t train_bytes = 0;
  int64_t val_bytes = 0;
};

CorpusSummary prepare_text_corpus(const std::string& input_text_path, const std::string& output_dir,
                                  double validation_fraction = 0.1);

// The King James Bible from the Debian package bible-kjv: runs
// `bible -f "Genesis 1:1-Revelation 22:21"`, whose lines read "Ge1:1 In the beginning
// God created the heaven and the earth.", and keeps the text of each verse, one
// verse per line (31102 verses, about 4.3 MB).
std::string bible_kjv_text();
CorpusSummary prepare_bible_kjv(const std::string& output_dir = "data/generated/bible_kjv",
                                double validation_fraction = 0.1);

// Language-modelling windows over a prepared corpus: example i has inputs =
// bytes[o, o+T) and targets = bytes[o+1, o+T+1). Train: o = i for every possible
// offset (the loader's shuffle makes them random offsets); val: o = i * T, the
// split cut into non-overlapping windows. `prepare_command` is named in the error
// when the files are missing ("strata prepare bible_kjv").
std::shared_ptr<const Dataset> open_byte_corpus(const std::string& folder, Split split, int64_t seq_len,
                                                const std::string& name, const std::string& prepare_command);

}  // namespace strata::data
