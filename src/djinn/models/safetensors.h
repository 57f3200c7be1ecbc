// Hugging Face safetensors files: a validating, mmap-based reader (SafetensorsFile)
// and a writer (write_safetensors). This file owns the on-disk format only; what the
// tensors mean (which model, which layer) belongs to the model loaders.
//
// Format: an 8-byte little-endian u64 header length N, then N bytes of a JSON object
//   name -> {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
// plus an optional "__metadata__" object of string -> string, then the raw data.
// data_offsets are byte offsets relative to the start of the data (byte 8 + N).
// Supported dtypes: F32, F16, BF16, I32, I64 (the five djinn DTypes).
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "djinn/core/dtype.h"
#include "djinn/core/shape.h"
#include "djinn/core/status.h"
#include "djinn/core/tensor.h"

namespace djinn {

// A header larger than this is treated as corrupt rather than read.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = uint64_t{100} << 20;  // 100 MiB

// The safetensors dtype string ("F32", "F16", "BF16", "I32", "I64") of `dtype`.
std::string_view safetensors_dtype_name(DType dtype);

// A read-only, mmap'd safetensors file. Move-only; unmaps in its destructor, which
// invalidates every TensorView obtained from it.
//
// open() validates the whole header up front (JSON shape, dtypes, offsets inside the
// file, shape x dtype size == data_offsets length, no 64-bit overflow), so tensor()
// on an open file cannot read outside the mapping. The mapping is PROT_READ: the
// views' `data` is non-const only because TensorView's is; writing through it faults.
// Views are as aligned as the file's offsets make them: files written by
// write_safetensors (and by the Hugging Face library) align every tensor to its
// element size, but open() does not reject a file that does not.
// If another process truncates the file while it is mapped, reading a view may raise
// SIGBUS; open() cannot guard against that.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors (each message names `path`, and the tensor where
  // one is at fault):
  //   kNotFound       missing, not a regular file, cannot be opened or mapped
  //   kDataLoss       truncated, absurd header length, bad JSON header, offsets
  //                   outside the file, shape/size disagreement, dims that overflow
  //   kUnimplemented  a dtype djinn does not support ("unsupported dtype 'F64'")
  //   kOutOfMemory    the mapping could not be made for lack of address space
  static Result<SafetensorsFile> open(const std::filesystem::path& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::filesystem::path& path() const { return path_; }
  bool contains(std::string_view name) const;
  // A contiguous view onto the mapping with lifetime kWeight, valid while this object
  // lives. kNotFound "tensor 'x' not found in <path>" if absent.
  Result<TensorView> tensor(std::string_view name) const;
  // Every tensor name, sorted; "__metadata__" is not a tensor.
  std::vector<std::string> names() const;
  // The "__metadata__" object; empty if the file has none.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    size_t begin;  // relative to the data region
  };

  SafetensorsFile() = default;
  void unmap();

  std::filesystem::path path_;
  const std::byte* mapping_ = nullptr;  // the whole file; null after a move
  size_t mapping_size_ = 0;
  size_t data_start_ = 0;  // 8 + header length
  std::map<std::string, Entry, std::less<>> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes `tensors` and `metadata` to `path` as a safetensors file, atomically: the
// bytes go to a temporary file in the same directory, which is renamed over `path`
// only once it is complete, so a reader never sees a partial file.
//
// The header is padded with spaces to a multiple of 8 bytes, and the data is laid out
// with the widest dtypes first (then by name), so every tensor starts at an offset
// aligned to its element size and the regions are contiguous with no gaps, as the
// Hugging Face readers require.
//
// Contract (DJINN_CHECK, throws CheckError): every tensor is contiguous, has
// non-negative dims and non-null data unless it is empty; names are unique,
// non-empty and not "__metadata__"; names and metadata are valid UTF-8.
// Returns a Status for I/O failures: kNotFound if the directory does not exist,
// kInvalidArgument if the path cannot be written (permissions, a directory, ...),
// kDataLoss if writing, flushing or renaming fails part-way.
Status write_safetensors(const std::filesystem::path& path,
                         const std::vector<std::pair<std::string, TensorView>>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace djinn
