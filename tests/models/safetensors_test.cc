// Tests for the safetensors reader and writer: round trips, the golden gpt2-tiny
// files, one test per malformed-file case open() must reject, and a mutation fuzz.
#include "djinn/models/safetensors.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#ifndef DJINN_GOLDEN_DIR
#define DJINN_GOLDEN_DIR "/work/shared/golden"
#endif

namespace djinn {
namespace {

namespace fs = std::filesystem;

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kI32, DType::kI64};

std::string bytes_of(const TensorView& view) {
  return std::string(static_cast<const char*>(view.data), view.nbytes());
}

// Contiguous bytes for a tensor of `shape` and `dtype`, filled with a pattern that
// depends on `seed` so that different tensors differ.
std::vector<std::byte> pattern_bytes(const Shape& shape, DType dtype, int seed) {
  std::vector<std::byte> bytes(static_cast<size_t>(num_elements(shape)) * dtype_size(dtype));
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = static_cast<std::byte>((i * 37 + seed * 101 + 11) & 0xff);
  return bytes;
}

// An 8-byte little-endian header length, then `header`, then `data`.
std::string safetensors_bytes(std::string_view header, std::string_view data = {}) {
  std::string out(8, '\0');
  const uint64_t length = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  out.append(header);
  out.append(data);
  return out;
}

std::string read_file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Each test gets a fresh directory under the gtest temp dir, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name =
        fmt::format("djinn_safetensors_{}_{}_{}", ::getpid(), info->test_suite_name(), info->name());
    std::replace(name.begin(), name.end(), '/', '_');
    dir_ = fs::path(::testing::TempDir()) / name;
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // Writes `bytes` to `name` in the test directory; returns its path.
  fs::path write_bytes(std::string_view name, std::string_view bytes) {
    const fs::path path = dir_ / name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    EXPECT_TRUE(out.good()) << path;
    return path;
  }

  // Opens `bytes` as a file and expects error `code` whose message names the file and
  // contains every one of `phrases`.
  void expect_open_error(std::string_view bytes, StatusCode code, const std::vector<std::string>& phrases) {
    const fs::path path = write_bytes("bad.safetensors", bytes);
    const Result<SafetensorsFile> file = SafetensorsFile::open(path);
    ASSERT_FALSE(file.ok()) << "opened a malformed file";
    EXPECT_EQ(file.status().code(), code) << file.status().to_string();
    const std::string& message = file.status().message();
    EXPECT_NE(message.find(path.string()), std::string::npos)
        << "message does not name the file: " << message;
    for (const std::string& phrase : phrases)
      EXPECT_NE(message.find(phrase), std::string::npos) << "missing '" << phrase << "' in: " << message;
  }

  // A well-formed file body whose single F32 tensor "w" has the given fields.
  void expect_entry_error(std::string_view entry_json, std::string_view data, StatusCode code,
                          const std::vector<std::string>& phrases) {
    expect_open_error(safetensors_bytes(fmt::format(R"({{"w":{}}})", entry_json), data), code, phrases);
  }

  fs::path dir_;
};

// ---------------------------------------------------------------------------------
// Round trips

class SafetensorsDTypeTest : public SafetensorsTest, public ::testing::WithParamInterface<DType> {};

TEST_P(SafetensorsDTypeTest, RoundTripMatrixScalarAndEmpty) {
  const DType dtype = GetParam();
  const std::vector<Shape> shapes = {{2, 3}, {}, {0, 4}, {5}};
  std::vector<std::vector<std::byte>> storage;
  std::vector<std::pair<std::string, TensorView>> tensors;
  for (size_t i = 0; i < shapes.size(); ++i) {
    storage.push_back(pattern_bytes(shapes[i], dtype, static_cast<int>(i)));
    tensors.emplace_back(fmt::format("t{}", i),
                         TensorView::contiguous(storage.back().data(), shapes[i], dtype));
  }
  const fs::path path = dir_ / "round_trip.safetensors";
  ASSERT_TRUE(write_safetensors(path, tensors).ok());

  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->path(), path);
  EXPECT_EQ(file->names(), (std::vector<std::string>{"t0", "t1", "t2", "t3"}));
  EXPECT_TRUE(file->metadata().empty());
  for (size_t i = 0; i < tensors.size(); ++i) {
    SCOPED_TRACE(tensors[i].first);
    Result<TensorView> view = file->tensor(tensors[i].first);
    ASSERT_TRUE(view.ok()) << view.status().to_string();
    EXPECT_EQ(view->dtype, dtype);
    EXPECT_EQ(view->shape, shapes[i]);
    EXPECT_EQ(view->strides, TensorView::contiguous_strides(shapes[i]));
    EXPECT_EQ(view->lifetime, LifetimeClass::kWeight);
    EXPECT_EQ(view->nbytes(), storage[i].size());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(view->data) % dtype_size(dtype), 0u);
    EXPECT_EQ(bytes_of(*view), bytes_of(tensors[i].second));
  }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, SafetensorsDTypeTest, ::testing::ValuesIn(kAllDTypes),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(safetensors_dtype_name(info.param));
                         });

TEST_F(SafetensorsTest, MixedDTypesAreAlignedGaplessAndHeaderPadded) {
  // Names chosen so that name order and alignment order disagree.
  const std::vector<std::pair<std::string, std::pair<Shape, DType>>> specs = {
      {"a_half", {{3}, DType::kF16}},  {"b_long", {{3}, DType::kI64}}, {"c_bf16", {{1, 1}, DType::kBF16}},
      {"d_float", {{3}, DType::kF32}}, {"e_int", {{1}, DType::kI32}},  {"f_long", {{2}, DType::kI64}},
  };
  std::vector<std::vector<std::byte>> storage;
  std::vector<std::pair<std::string, TensorView>> tensors;
  for (const auto& [name, spec] : specs) {
    storage.push_back(pattern_bytes(spec.first, spec.second, static_cast<int>(storage.size())));
    tensors.emplace_back(name, TensorView::contiguous(storage.back().data(), spec.first, spec.second));
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "ünïcødé"}};
  const fs::path path = dir_ / "mixed.safetensors";
  ASSERT_TRUE(write_safetensors(path, tensors, metadata).ok());

  // On disk: header length a multiple of 8, offsets contiguous from 0 to the end.
  const std::string bytes = read_file_bytes(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i)
    header_size |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ(header_size % 8, 0u);
  const auto header = nlohmann::json::parse(bytes.substr(8, header_size));
  std::vector<std::pair<int64_t, int64_t>> regions;
  for (const auto& [name, entry] : header.items())
    if (name != "__metadata__") regions.emplace_back(entry["data_offsets"][0], entry["data_offsets"][1]);
  std::sort(regions.begin(), regions.end());
  int64_t expected_begin = 0;
  for (const auto& [begin, end] : regions) {
    EXPECT_EQ(begin, expected_begin);
    expected_begin = end;
  }
  EXPECT_EQ(static_cast<uint64_t>(expected_begin), bytes.size() - 8 - header_size);

  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->metadata(), metadata);
  for (size_t i = 0; i < tensors.size(); ++i) {
    Result<TensorView> view = file->tensor(tensors[i].first);
    ASSERT_TRUE(view.ok());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(view->data) % dtype_size(view->dtype), 0u) << tensors[i].first;
    EXPECT_EQ(bytes_of(*view), bytes_of(tensors[i].second)) << tensors[i].first;
  }
}

TEST_F(SafetensorsTest, EmptyTensorListWritesAValidFile) {
  const fs::path path = dir_ / "empty.safetensors";
  ASSERT_TRUE(write_safetensors(path, {}, {{"k", "v"}}).ok());
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_TRUE(file->names().empty());
  EXPECT_EQ(file->metadata().at("k"), "v");
}

TEST_F(SafetensorsTest, WriteReplacesExistingFileAndLeavesNoTemporary) {
  const fs::path path = dir_ / "replaced.safetensors";
  std::vector<float> first = {1, 2, 3}, second = {4, 5};
  ASSERT_TRUE(write_safetensors(path, {{"x", TensorView::contiguous(first.data(), {3}, DType::kF32)}}).ok());
  ASSERT_TRUE(write_safetensors(path, {{"y", TensorView::contiguous(second.data(), {2}, DType::kF32)}}).ok());
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->names(), std::vector<std::string>{"y"});
  EXPECT_EQ(file->tensor("y")->as<float>()[1], 5.0f);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(SafetensorsTest, WriteIntoMissingDirectoryIsNotFound) {
  std::vector<float> values = {1};
  const fs::path path = dir_ / "no_such_dir" / "out.safetensors";
  const Status status =
      write_safetensors(path, {{"x", TensorView::contiguous(values.data(), {1}, DType::kF32)}});
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), StatusCode::kNotFound) << status.to_string();
  EXPECT_NE(status.message().find(path.string()), std::string::npos) << status.message();
}

TEST_F(SafetensorsTest, WriterRejectsContractViolations) {
  std::vector<float> values(6, 1.0f);
  const fs::path path = dir_ / "rejected.safetensors";
  const TensorView good = TensorView::contiguous(values.data(), {2, 3}, DType::kF32);
  TensorView transposed = good;
  transposed.shape = {3, 2};
  transposed.strides = {1, 3};
  EXPECT_THROW((void)write_safetensors(path, {{"t", transposed}}), CheckError);
  EXPECT_THROW((void)write_safetensors(path, {{"a", good}, {"a", good}}), CheckError);
  EXPECT_THROW((void)write_safetensors(path, {{"__metadata__", good}}), CheckError);
  EXPECT_THROW((void)write_safetensors(path, {{"", good}}), CheckError);
  EXPECT_THROW((void)write_safetensors(path, {{"n", TensorView::contiguous(nullptr, {2}, DType::kF32)}}),
               CheckError);
  EXPECT_THROW((void)write_safetensors(path, {{"bad\xff", good}}), CheckError);  // not UTF-8
  EXPECT_FALSE(fs::exists(path));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 0);
}

TEST_F(SafetensorsTest, MovedFileKeepsViewsValid) {
  std::vector<int32_t> values = {7, 8, 9};
  const fs::path path = dir_ / "moved.safetensors";
  ASSERT_TRUE(
      write_safetensors(path, {{"ids", TensorView::contiguous(values.data(), {3}, DType::kI32)}}).ok());
  Result<SafetensorsFile> opened = SafetensorsFile::open(path);
  ASSERT_TRUE(opened.ok());
  SafetensorsFile file = std::move(opened).value();
  const TensorView view = file.tensor("ids").value();
  SafetensorsFile moved = std::move(file);
  EXPECT_EQ(view.as<int32_t>()[2], 9);
  EXPECT_EQ(moved.tensor("ids")->as<int32_t>()[0], 7);
  Result<SafetensorsFile> other = SafetensorsFile::open(path);
  ASSERT_TRUE(other.ok());
  moved = std::move(other).value();  // unmaps the first mapping, takes the second
  EXPECT_EQ(moved.tensor("ids")->as<int32_t>()[1], 8);
}

TEST_F(SafetensorsTest, OpensUnpaddedHeaderWithTrailingSpaces) {
  float value = 2.5f;
  const std::string data(reinterpret_cast<const char*>(&value), sizeof value);
  const fs::path path =
      write_bytes("unpadded.safetensors",
                  safetensors_bytes(
                      R"({"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"__metadata__":{}}   )", data));
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_TRUE(file->contains("s"));
  EXPECT_FALSE(file->contains("t"));
  EXPECT_EQ(file->tensor("s")->numel(), 1);
  float read;
  std::memcpy(&read, file->tensor("s")->data, sizeof read);
  EXPECT_EQ(read, 2.5f);
}

// ---------------------------------------------------------------------------------
// Golden fixtures (written by Hugging Face transformers)

const fs::path kGpt2Dir = fs::path(DJINN_GOLDEN_DIR) / "gpt2-tiny";

TEST_F(SafetensorsTest, ReadsGoldenGpt2TinyModel) {
  Result<SafetensorsFile> file = SafetensorsFile::open(kGpt2Dir / "model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  const std::vector<std::string> names = file->names();
  EXPECT_EQ(names.size(), 28u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));

  Result<TensorView> wte = file->tensor("transformer.wte.weight");
  ASSERT_TRUE(wte.ok()) << wte.status().to_string();
  EXPECT_EQ(wte->shape, (Shape{512, 64}));
  EXPECT_EQ(wte->dtype, DType::kF32);
  EXPECT_EQ(wte->strides, (std::vector<int64_t>{64, 1}));
  EXPECT_EQ(wte->lifetime, LifetimeClass::kWeight);
  EXPECT_FLOAT_EQ(wte->as<float>()[0], -0.1369207203388214f);
  EXPECT_FLOAT_EQ(wte->as<float>()[3], -0.1530960202217102f);

  Result<TensorView> attn = file->tensor("transformer.h.0.attn.c_attn.weight");
  ASSERT_TRUE(attn.ok());
  EXPECT_EQ(attn->shape, (Shape{64, 192}));  // GPT-2 Conv1D: [in, out]
  Result<TensorView> ln_f = file->tensor("transformer.ln_f.weight");
  ASSERT_TRUE(ln_f.ok());
  EXPECT_EQ(ln_f->shape, (Shape{64}));
  EXPECT_EQ(ln_f->as<float>()[0], 1.0f);
}

TEST_F(SafetensorsTest, ReadsGoldenGpt2TinyExpectedIds) {
  Result<SafetensorsFile> file = SafetensorsFile::open(kGpt2Dir / "expected.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  EXPECT_EQ(file->names(), (std::vector<std::string>{"generated_ids", "input_ids", "logits"}));
  EXPECT_TRUE(file->metadata().empty());
  Result<TensorView> ids = file->tensor("input_ids");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->dtype, DType::kI64);
  EXPECT_EQ(ids->shape, (Shape{1, 16}));
  const std::vector<int64_t> expected = {129, 35,  185, 168, 201, 232, 210, 68,
                                         197, 436, 385, 407, 254, 291, 55,  497};
  EXPECT_EQ(std::vector<int64_t>(ids->as<int64_t>(), ids->as<int64_t>() + 16), expected);
  Result<TensorView> logits = file->tensor("logits");
  ASSERT_TRUE(logits.ok());
  EXPECT_EQ(logits->shape, (Shape{1, 40, 512}));
}

TEST_F(SafetensorsTest, RewritesGoldenModelByteForByte) {
  Result<SafetensorsFile> golden = SafetensorsFile::open(kGpt2Dir / "model.safetensors");
  ASSERT_TRUE(golden.ok()) << golden.status().to_string();
  std::vector<std::pair<std::string, TensorView>> tensors;
  for (const std::string& name : golden->names()) tensors.emplace_back(name, golden->tensor(name).value());
  const fs::path path = dir_ / "copy.safetensors";
  ASSERT_TRUE(write_safetensors(path, tensors, golden->metadata()).ok());
  Result<SafetensorsFile> copy = SafetensorsFile::open(path);
  ASSERT_TRUE(copy.ok()) << copy.status().to_string();
  EXPECT_EQ(copy->names(), golden->names());
  EXPECT_EQ(copy->metadata(), golden->metadata());
  for (const auto& [name, view] : tensors) {
    const TensorView copied = copy->tensor(name).value();
    EXPECT_EQ(copied.shape, view.shape) << name;
    EXPECT_EQ(copied.dtype, view.dtype) << name;
    EXPECT_EQ(bytes_of(copied), bytes_of(view)) << name;
  }
}

// ---------------------------------------------------------------------------------
// Malformed files: one test per case open() must reject.

const std::string kEightBytes(8, '\x01');

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  const fs::path path = dir_ / "does_not_exist.safetensors";
  const Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kNotFound);
  EXPECT_NE(file.status().message().find(path.string()), std::string::npos) << file.status().message();
  EXPECT_NE(file.status().message().find("cannot open"), std::string::npos) << file.status().message();
}

TEST_F(SafetensorsTest, DirectoryIsNotFound) {
  const Result<SafetensorsFile> file = SafetensorsFile::open(dir_);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kNotFound);
  EXPECT_NE(file.status().message().find(dir_.string()), std::string::npos) << file.status().message();
  EXPECT_NE(file.status().message().find("not a regular file"), std::string::npos) << file.status().message();
}

TEST_F(SafetensorsTest, FifoIsNotFoundWithoutBlocking) {
  const fs::path path = dir_ / "fifo";
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  const Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), StatusCode::kNotFound);
  EXPECT_NE(file.status().message().find("not a regular file"), std::string::npos) << file.status().message();
}

TEST_F(SafetensorsTest, EmptyFileIsTruncated) {
  expect_open_error("", StatusCode::kDataLoss, {"truncated", "0 bytes"});
}

TEST_F(SafetensorsTest, FileShorterThanLengthFieldIsTruncated) {
  expect_open_error(std::string("\x10\0\0\0\0", 5), StatusCode::kDataLoss, {"truncated", "5 bytes"});
}

TEST_F(SafetensorsTest, HeaderLengthBeyondFileIsTruncated) {
  std::string bytes = safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})");
  bytes.resize(bytes.size() - 10);
  expect_open_error(bytes, StatusCode::kDataLoss, {"truncated", "header length 54", "only 44 bytes"});
}

TEST_F(SafetensorsTest, AbsurdHeaderLengthIsDataLoss) {
  std::string bytes = safetensors_bytes("{}");
  const uint64_t absurd = uint64_t{1} << 40;
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((absurd >> (8 * i)) & 0xff);
  expect_open_error(bytes, StatusCode::kDataLoss, {"header length 1099511627776", "absurd"});
}

TEST_F(SafetensorsTest, HeaderThatIsNotJsonIsDataLoss) {
  expect_open_error(safetensors_bytes(R"({"w": {"dtype": "F32", )"), StatusCode::kDataLoss,
                    {"bad JSON header"});
}

TEST_F(SafetensorsTest, HeaderThatIsNotAnObjectIsDataLoss) {
  expect_open_error(safetensors_bytes("[1, 2, 3]"), StatusCode::kDataLoss,
                    {"bad JSON header", "expected a JSON object, got array"});
}

TEST_F(SafetensorsTest, EntryThatIsNotAnObjectIsDataLoss) {
  expect_entry_error("5", "", StatusCode::kDataLoss,
                     {"bad JSON header", "tensor 'w'", "must map to an object"});
}

TEST_F(SafetensorsTest, EntryMissingDtypeIsDataLoss) {
  expect_entry_error(R"({"shape":[2],"data_offsets":[0,8]})", kEightBytes, StatusCode::kDataLoss,
                     {"bad JSON header", "tensor 'w'", "no \"dtype\""});
}

TEST_F(SafetensorsTest, EntryMissingShapeIsDataLoss) {
  expect_entry_error(R"({"dtype":"F32","data_offsets":[0,8]})", kEightBytes, StatusCode::kDataLoss,
                     {"bad JSON header", "tensor 'w'", "no \"shape\""});
}

TEST_F(SafetensorsTest, EntryMissingDataOffsetsIsDataLoss) {
  expect_entry_error(R"({"dtype":"F32","shape":[2]})", kEightBytes, StatusCode::kDataLoss,
                     {"bad JSON header", "tensor 'w'", "no \"data_offsets\""});
}

TEST_F(SafetensorsTest, DtypeThatIsNotAStringIsDataLoss) {
  expect_entry_error(R"({"dtype":32,"shape":[2],"data_offsets":[0,8]})", kEightBytes, StatusCode::kDataLoss,
                     {"bad JSON header", "tensor 'w'", "\"dtype\" must be a string"});
}

TEST_F(SafetensorsTest, ShapeThatIsNotAnArrayIsDataLoss) {
  expect_entry_error(R"({"dtype":"F32","shape":"2","data_offsets":[0,8]})", kEightBytes,
                     StatusCode::kDataLoss, {"bad JSON header", "tensor 'w'", "\"shape\" must be an array"});
}

TEST_F(SafetensorsTest, NonIntegerDimIsDataLoss) {
  expect_entry_error(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})", kEightBytes,
                     StatusCode::kDataLoss, {"bad JSON header", "tensor 'w'", "dim 2.5", "not an integer"});
}

TEST_F(SafetensorsTest, NegativeDimIsDataLoss) {
  expect_entry_error(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", kEightBytes,
                     StatusCode::kDataLoss, {"bad JSON header", "tensor 'w'", "negative dim -2"});
}

TEST_F(SafetensorsTest, DimBeyondInt64IsDataLoss) {
  expect_entry_error(R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]})", kEightBytes,
                     StatusCode::kDataLoss, {"bad JSON header", "tensor 'w'", "dim 18446744073709551615"});
}

TEST_F(SafetensorsTest, DataOffsetsOfWrongLengthIsDataLoss) {
  expect_entry_error(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})", kEightBytes, StatusCode::kDataLoss,
                     {"bad JSON header", "tensor 'w'", "\"data_offsets\" must be two integers"});
}

TEST_F(SafetensorsTest, DataOffsetsThatAreNotIntegersIsDataLoss) {
  expect_entry_error(R"({"dtype":"F32","shape":[2],"data_offsets":["0","8"]})", kEightBytes,
                     StatusCode::kDataLoss,
                     {"bad JSON header", "tensor 'w'", "\"data_offsets\" must be two integers"});
}

TEST_F(SafetensorsTest, NegativeDataOffsetIsDataLoss) {
  expect_entry_error(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})", kEightBytes,
                     StatusCode::kDataLoss,
                     {"bad JSON header", "tensor 'w'", "\"data_offsets\" must be two integers"});
}

TEST_F(SafetensorsTest, MetadataThatIsNotAnObjectIsDataLoss) {
  expect_open_error(safetensors_bytes(R"({"__metadata__":["format","pt"]})"), StatusCode::kDataLoss,
                    {"bad JSON header", "\"__metadata__\" must be an object"});
}

TEST_F(SafetensorsTest, MetadataValueThatIsNotAStringIsDataLoss) {
  expect_open_error(safetensors_bytes(R"({"__metadata__":{"format":"pt","layers":2}})"),
                    StatusCode::kDataLoss, {"bad JSON header", "value of 'layers' must be a string"});
}

class SafetensorsUnsupportedDTypeTest : public SafetensorsTest,
                                        public ::testing::WithParamInterface<const char*> {};

TEST_P(SafetensorsUnsupportedDTypeTest, IsUnimplementedAndNamesTheTensor) {
  const std::string dtype = GetParam();
  expect_entry_error(fmt::format(R"({{"dtype":"{}","shape":[1],"data_offsets":[0,8]}})", dtype), kEightBytes,
                     StatusCode::kUnimplemented,
                     {fmt::format("unsupported dtype '{}'", dtype), "tensor 'w'"});
}

INSTANTIATE_TEST_SUITE_P(Rejected, SafetensorsUnsupportedDTypeTest,
                         ::testing::Values("F64", "BOOL", "U8", "Q4", "f32", ""));

TEST_F(SafetensorsTest, DataOffsetsBeginAfterEndIsOutsideTheFile) {
  expect_entry_error(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})", kEightBytes,
                     StatusCode::kDataLoss,
                     {"tensor 'w'", "offset outside the file", "[8, 0]", "begin is after end"});
}

TEST_F(SafetensorsTest, DataOffsetsEndBeyondDataIsOutsideTheFile) {
  expect_entry_error(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})", kEightBytes,
                     StatusCode::kDataLoss,
                     {"tensor 'w'", "offset outside the file", "[0, 16]", "data region is 8 bytes"});
}

TEST_F(SafetensorsTest, HugeDataOffsetsAreOutsideTheFile) {
  expect_entry_error(
      R"({"dtype":"F32","shape":[2],"data_offsets":[9223372036854775799,9223372036854775807]})", kEightBytes,
      StatusCode::kDataLoss, {"tensor 'w'", "offset outside the file"});
}

TEST_F(SafetensorsTest, ShapeThatDisagreesWithDataOffsetsIsDataLoss) {
  expect_entry_error(R"({"dtype":"F32","shape":[2,3],"data_offsets":[0,8]})", kEightBytes,
                     StatusCode::kDataLoss,
                     {"tensor 'w'", "shape [2, 3] of dtype F32 needs 24 bytes but data_offsets give 8"});
}

TEST_F(SafetensorsTest, DimsWhoseProductOverflowsAreDataLoss) {
  expect_entry_error(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})", kEightBytes,
                     StatusCode::kDataLoss,
                     {"tensor 'w'", "shape [4294967296, 4294967296] of dtype F32", "overflow"});
}

TEST_F(SafetensorsTest, OverflowHiddenBehindAZeroDimIsDataLoss) {
  // numel would be 0, but TensorView's partial products (numel, strides) would overflow.
  expect_entry_error(R"({"dtype":"I64","shape":[4611686018427387904,4,0],"data_offsets":[0,0]})", kEightBytes,
                     StatusCode::kDataLoss, {"tensor 'w'", "overflow"});
}

TEST_F(SafetensorsTest, MissingTensorIsNotFound) {
  const fs::path path = write_bytes(
      "one.safetensors",
      safetensors_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", kEightBytes));
  Result<SafetensorsFile> file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  const Result<TensorView> view = file->tensor("x");
  ASSERT_FALSE(view.ok());
  EXPECT_EQ(view.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(view.status().message(), fmt::format("tensor 'x' not found in {}", path.string()));
}

// ---------------------------------------------------------------------------------
// Mutations of a valid file: open() must never crash; it either succeeds, with every
// view readable, or returns an error naming the file.

TEST_F(SafetensorsTest, MutatedFilesNeverCrashOpen) {
  std::vector<float> f32(12, 0.5f);
  std::vector<uint16_t> f16(5, 0x3c00);
  std::vector<int64_t> i64 = {1, 2, 3};
  const fs::path valid_path = dir_ / "valid.safetensors";
  ASSERT_TRUE(write_safetensors(valid_path,
                                {{"weight", TensorView::contiguous(f32.data(), {3, 4}, DType::kF32)},
                                 {"half", TensorView::contiguous(f16.data(), {5}, DType::kF16)},
                                 {"ids", TensorView::contiguous(i64.data(), {1, 3}, DType::kI64)}},
                                {{"format", "pt"}})
                  .ok());
  const std::string valid = read_file_bytes(valid_path);
  uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i)
    header_size |= static_cast<uint64_t>(static_cast<unsigned char>(valid[i])) << (8 * i);

  std::mt19937_64 rng(20240527);
  const auto uniform = [&](size_t lo, size_t hi) { return lo + static_cast<size_t>(rng() % (hi - lo + 1)); };
  const std::string json_chars = "\"[]{},:-0123456789e. \xff";
  const std::vector<std::string> numbers = {
      "18446744073709551615", "9223372036854775807",     "-1", "0", "1e30",
      "4294967296",           "99999999999999999999999", "3"};
  int opened = 0, rejected = 0;
  for (int iteration = 0; iteration < 600; ++iteration) {
    std::string bytes = valid;
    switch (iteration % 6) {
      case 0:  // flip a few bits anywhere in the length field or header
        for (size_t n = uniform(1, 4); n > 0; --n)
          bytes[uniform(0, 8 + header_size - 1)] ^= 1 << uniform(0, 7);
        break;
      case 1:  // a JSON-significant character somewhere in the header
        bytes[uniform(8, 8 + header_size - 1)] = json_chars[uniform(0, json_chars.size() - 1)];
        break;
      case 2:  // truncated anywhere
        bytes.resize(uniform(0, bytes.size() - 1));
        break;
      case 3: {  // a nearby or random header length
        const uint64_t length = iteration % 12 == 3 ? rng() : header_size + uniform(0, 16) - 8;
        for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((length >> (8 * i)) & 0xff);
        break;
      }
      case 4: {  // a number in the header replaced by an extreme one
        std::vector<size_t> digit_runs;
        for (size_t i = 8; i < 8 + header_size; ++i)
          if (std::isdigit(static_cast<unsigned char>(bytes[i])) &&
              !std::isdigit(static_cast<unsigned char>(bytes[i - 1])))
            digit_runs.push_back(i);
        const size_t start = digit_runs[uniform(0, digit_runs.size() - 1)];
        size_t end = start;
        while (std::isdigit(static_cast<unsigned char>(bytes[end]))) ++end;
        std::string header = bytes.substr(8, header_size);
        header.replace(start - 8, end - start, numbers[uniform(0, numbers.size() - 1)]);
        bytes = safetensors_bytes(header, std::string_view(valid).substr(8 + header_size));
        break;
      }
      case 5:  // garbage
        bytes.resize(uniform(0, 256));
        for (char& c : bytes) c = static_cast<char>(rng());
        break;
    }
    const fs::path path = write_bytes("mutated.safetensors", bytes);
    const Result<SafetensorsFile> file = SafetensorsFile::open(path);
    if (file.ok()) {
      ++opened;
      for (const std::string& name : file->names()) {
        const Result<TensorView> view = file->tensor(name);
        ASSERT_TRUE(view.ok()) << name;
        unsigned checksum = 0;  // touch every byte: out-of-bounds views would fault here (or under ASan)
        for (size_t i = 0; i < view->nbytes(); ++i)
          checksum += static_cast<const unsigned char*>(view->data)[i];
        (void)checksum;
      }
    } else {
      ++rejected;
      EXPECT_FALSE(file.status().message().empty());
      EXPECT_NE(file.status().message().find(path.string()), std::string::npos) << file.status().message();
    }
  }
  EXPECT_GT(opened, 0);
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace djinn
