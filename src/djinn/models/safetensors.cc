#include "djinn/models/safetensors.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <set>
#include <system_error>

namespace djinn {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; djinn copies it without byte swapping");

using Json = nlohmann::json;

constexpr std::string_view kMetadataKey = "__metadata__";
constexpr size_t kLengthFieldBytes = 8;

struct SafetensorsDType {
  std::string_view name;
  DType dtype;
};
constexpr SafetensorsDType kSupportedDTypes[] = {
    {"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16},
    {"I32", DType::kI32}, {"I64", DType::kI64},
};

std::optional<DType> parse_safetensors_dtype(std::string_view name) {
  for (const auto& entry : kSupportedDTypes)
    if (entry.name == name) return entry.dtype;
  return std::nullopt;
}

std::string errno_text(int error) {
  return std::error_code(error, std::generic_category()).message();
}

// Bytes that `shape` of `dtype` occupies, or nullopt if that, or any partial product
// of its dims that TensorView computes (numel, strides), does not fit in int64. Zero
// dims count as 1 for the overflow test so that e.g. [2^62, 2^62, 0] is rejected too.
std::optional<int64_t> checked_nbytes(const Shape& shape, DType dtype) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  int64_t nonzero_product = 1;
  bool empty = false;
  for (int64_t dim : shape) {
    if (dim < 0) return std::nullopt;
    if (dim == 0) {
      empty = true;
      continue;
    }
    if (nonzero_product > kMax / dim) return std::nullopt;
    nonzero_product *= dim;
  }
  const auto element_size = static_cast<int64_t>(dtype_size(dtype));
  if (nonzero_product > kMax / element_size) return std::nullopt;
  return empty ? 0 : nonzero_product * element_size;
}

// A short rendering of a JSON value for error messages.
std::string abbreviated(const Json& value) {
  constexpr size_t kMaxChars = 60;
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > kMaxChars) text = text.substr(0, kMaxChars) + "...";
  return text;
}

// Reads a JSON value that must be a non-negative integer that fits in int64.
std::optional<int64_t> as_non_negative_int64(const Json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;  // nlohmann parses n >= 0 as unsigned
  const auto number = value.get<uint64_t>();
  if (number > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return static_cast<int64_t>(number);
}

// Closes a file descriptor when it goes out of scope.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  // Closes now and reports close()'s errno (0 on success); the destructor then does nothing.
  int close_now() {
    const int result = ::close(fd_);
    fd_ = -1;
    return result == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

}  // namespace

std::string_view safetensors_dtype_name(DType dtype) {
  for (const auto& entry : kSupportedDTypes)
    if (entry.dtype == dtype) return entry.name;
  DJINN_ASSERT(false, "bad dtype {}", static_cast<int>(dtype));
}

// ---------------------------------------------------------------------------------
// Reader

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      mapping_(std::exchange(other.mapping_, nullptr)),
      mapping_size_(std::exchange(other.mapping_size_, 0)),
      data_start_(std::exchange(other.data_start_, 0)),
      entries_(std::move(other.entries_)),
      metadata_(std::move(other.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    unmap();
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_size_ = std::exchange(other.mapping_size_, 0);
    data_start_ = std::exchange(other.data_start_, 0);
    entries_ = std::move(other.entries_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  unmap();
}

void SafetensorsFile::unmap() {
  if (mapping_ != nullptr) ::munmap(const_cast<std::byte*>(mapping_), mapping_size_);
  mapping_ = nullptr;
  mapping_size_ = 0;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string where = path.string();

  // O_NONBLOCK so that opening a FIFO does not wait for a writer; it is then rejected
  // as not a regular file. It has no effect on regular files.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return not_found(fmt::format("cannot open safetensors file {}: {}", where, errno_text(errno)));
  FdCloser closer(fd);
  struct stat info {};
  if (::fstat(fd, &info) != 0)
    return not_found(fmt::format("cannot stat safetensors file {}: {}", where, errno_text(errno)));
  if (!S_ISREG(info.st_mode)) return not_found(fmt::format("{} is not a regular file", where));

  const auto file_size = static_cast<uint64_t>(info.st_size);
  if (file_size < kLengthFieldBytes) {
    return data_loss(
        fmt::format("truncated safetensors file {}: {} bytes, shorter than the {}-byte header length", where,
                    file_size, kLengthFieldBytes));
  }
  if (file_size > std::numeric_limits<size_t>::max())
    return out_of_memory(fmt::format("safetensors file {} ({} bytes) is too large to map", where, file_size));

  void* mapped = ::mmap(nullptr, static_cast<size_t>(file_size), PROT_READ, MAP_PRIVATE, fd, 0);
  if (mapped == MAP_FAILED) {
    const int error = errno;
    const std::string message = fmt::format("cannot mmap safetensors file {}: {}", where, errno_text(error));
    return error == ENOMEM ? out_of_memory(message) : not_found(message);
  }
  SafetensorsFile file;  // owns the mapping from here on, so every error path unmaps
  file.path_ = path;
  file.mapping_ = static_cast<const std::byte*>(mapped);
  file.mapping_size_ = static_cast<size_t>(file_size);

  uint64_t header_size = 0;
  for (size_t i = 0; i < kLengthFieldBytes; ++i)
    header_size |= static_cast<uint64_t>(file.mapping_[i]) << (8 * i);
  if (header_size > kSafetensorsMaxHeaderBytes) {
    return data_loss(fmt::format("safetensors file {}: header length {} bytes is absurd (limit {} bytes)",
                                 where, header_size, kSafetensorsMaxHeaderBytes));
  }
  if (header_size > file_size - kLengthFieldBytes) {
    return data_loss(
        fmt::format("truncated safetensors file {}: header length {} bytes but only {} bytes follow", where,
                    header_size, file_size - kLengthFieldBytes));
  }
  file.data_start_ = kLengthFieldBytes + static_cast<size_t>(header_size);
  const uint64_t data_size = file_size - file.data_start_;

  Json header;
  try {
    const auto* text = reinterpret_cast<const char*>(file.mapping_ + kLengthFieldBytes);
    header = Json::parse(text, text + header_size);
  } catch (const Json::exception& e) {
    return data_loss(fmt::format("bad JSON header in {}: {}", where, e.what()));
  } catch (const std::bad_alloc&) {
    return out_of_memory(
        fmt::format("out of memory parsing the {}-byte JSON header of {}", header_size, where));
  }
  if (!header.is_object()) {
    return data_loss(
        fmt::format("bad JSON header in {}: expected a JSON object, got {}", where, header.type_name()));
  }

  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      if (!value.is_object()) {
        return data_loss(fmt::format("bad JSON header in {}: \"{}\" must be an object, got {}", where,
                                     kMetadataKey, value.type_name()));
      }
      for (const auto& [key, item] : value.items()) {
        if (!item.is_string()) {
          return data_loss(fmt::format("bad JSON header in {}: \"{}\" value of '{}' must be a string, got {}",
                                       where, kMetadataKey, key, item.type_name()));
        }
        file.metadata_.emplace(key, item.get<std::string>());
      }
      continue;
    }

    // Structure first: every field present with the right JSON type.
    const std::string bad_entry = fmt::format("bad JSON header in {}: tensor '{}'", where, name);
    if (!value.is_object())
      return data_loss(fmt::format("{} must map to an object, got {}", bad_entry, value.type_name()));
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!value.contains(field)) return data_loss(fmt::format("{} has no \"{}\"", bad_entry, field));
    const Json& dtype_json = value["dtype"];
    const Json& shape_json = value["shape"];
    const Json& offsets_json = value["data_offsets"];
    if (!dtype_json.is_string())
      return data_loss(
          fmt::format("{}: \"dtype\" must be a string, got {}", bad_entry, dtype_json.type_name()));
    if (!shape_json.is_array())
      return data_loss(
          fmt::format("{}: \"shape\" must be an array, got {}", bad_entry, abbreviated(shape_json)));
    Shape shape;
    shape.reserve(shape_json.size());
    for (const Json& dim_json : shape_json) {
      if (dim_json.is_number_integer() && !dim_json.is_number_unsigned()) {  // a negative integer
        return data_loss(fmt::format("{}: negative dim {} in \"shape\" {}", bad_entry,
                                     dim_json.get<int64_t>(), abbreviated(shape_json)));
      }
      const std::optional<int64_t> dim = as_non_negative_int64(dim_json);
      if (!dim) {
        return data_loss(fmt::format("{}: dim {} in \"shape\" is not an integer in [0, 2^63)", bad_entry,
                                     abbreviated(dim_json)));
      }
      shape.push_back(*dim);
    }
    std::optional<int64_t> begin, end;
    if (offsets_json.is_array() && offsets_json.size() == 2) {
      begin = as_non_negative_int64(offsets_json[0]);
      end = as_non_negative_int64(offsets_json[1]);
    }
    if (!begin || !end) {
      return data_loss(fmt::format("{}: \"data_offsets\" must be two integers in [0, 2^63), got {}",
                                   bad_entry, abbreviated(offsets_json)));
    }

    // Then meaning: a dtype djinn supports, offsets inside the file, a size that fits.
    const auto& dtype_name = dtype_json.get_ref<const std::string&>();
    const std::optional<DType> dtype = parse_safetensors_dtype(dtype_name);
    if (!dtype) {
      return unimplemented(
          fmt::format("unsupported dtype '{}' for tensor '{}' in {} (djinn reads F32, F16, BF16, I32, I64)",
                      dtype_name, name, where));
    }
    if (*begin > *end) {
      return data_loss(fmt::format(
          "tensor '{}' in {}: data_offsets [{}, {}] put an offset outside the file: begin is after end", name,
          where, *begin, *end));
    }
    if (static_cast<uint64_t>(*end) > data_size) {
      return data_loss(
          fmt::format("tensor '{}' in {}: data_offsets [{}, {}] put an offset outside the file: the data "
                      "region is {} bytes",
                      name, where, *begin, *end, data_size));
    }
    const std::optional<int64_t> needed = checked_nbytes(shape, *dtype);
    if (!needed) {
      return data_loss(fmt::format("tensor '{}' in {}: shape {} of dtype {} overflows a 64-bit byte count",
                                   name, where, to_string(shape), dtype_name));
    }
    if (*needed != *end - *begin) {
      return data_loss(
          fmt::format("tensor '{}' in {}: shape {} of dtype {} needs {} bytes but data_offsets give {}", name,
                      where, to_string(shape), dtype_name, *needed, *end - *begin));
    }
    file.entries_.insert_or_assign(name, Entry{*dtype, std::move(shape), static_cast<size_t>(*begin)});
  }
  return file;
}

bool SafetensorsFile::contains(std::string_view name) const {
  return entries_.find(name) != entries_.end();
}

Result<TensorView> SafetensorsFile::tensor(std::string_view name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end())
    return not_found(fmt::format("tensor '{}' not found in {}", name, path_.string()));
  const Entry& entry = it->second;
  auto* data = const_cast<std::byte*>(mapping_ + data_start_ + entry.begin);
  return TensorView::contiguous(data, entry.shape, entry.dtype, LifetimeClass::kWeight);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);  // std::map: already sorted
  return out;
}

// ---------------------------------------------------------------------------------
// Writer

namespace {

// Maps an errno from creating or writing `path` to a Status.
Status io_error(int error, std::string_view what, const std::filesystem::path& path) {
  std::string message = fmt::format("{} {}: {}", what, path.string(), errno_text(error));
  switch (error) {
    case ENOENT:
    case ENOTDIR: return not_found(std::move(message));
    case EACCES:
    case EPERM:
    case EROFS:
    case EISDIR:
    case ENAMETOOLONG: return invalid_argument(std::move(message));
    case ENOMEM: return out_of_memory(std::move(message));
    default: return data_loss(std::move(message));
  }
}

// Writes all of `bytes`, retrying short writes and EINTR. Returns 0 or an errno.
int write_all(int fd, const void* bytes, size_t size) {
  const auto* cursor = static_cast<const char*>(bytes);
  while (size > 0) {
    const ssize_t written = ::write(fd, cursor, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    cursor += written;
    size -= static_cast<size_t>(written);
  }
  return 0;
}

// A name for the temporary file beside `path`, unique within this host.
std::filesystem::path temporary_path_for(const std::filesystem::path& path) {
  static std::atomic<uint64_t> counter{0};
  std::filesystem::path temporary = path;
  temporary += fmt::format(".tmp.{}.{}", ::getpid(), counter.fetch_add(1));
  return temporary;
}

}  // namespace

Status write_safetensors(const std::filesystem::path& path,
                         const std::vector<std::pair<std::string, TensorView>>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> seen;
  std::vector<int64_t> nbytes(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, view] = tensors[i];
    DJINN_CHECK(!name.empty(), "write_safetensors: tensor #{} has an empty name", i);
    DJINN_CHECK(name != kMetadataKey, "write_safetensors: '{}' is reserved, not a tensor name", kMetadataKey);
    DJINN_CHECK(seen.insert(name).second, "write_safetensors: duplicate tensor name '{}'", name);
    const std::optional<int64_t> size = checked_nbytes(view.shape, view.dtype);
    DJINN_CHECK(size.has_value(), "write_safetensors: tensor '{}' has a negative or overflowing shape {}",
                name, to_string(view.shape));
    DJINN_CHECK(view.is_contiguous(),
                "write_safetensors: tensor '{}' is not contiguous (shape {}, strides {})", name,
                to_string(view.shape), to_string(view.strides));
    DJINN_CHECK(*size == 0 || view.data != nullptr, "write_safetensors: tensor '{}' has null data", name);
    nbytes[i] = *size;
  }

  // Widest dtype first, then by name: with gapless regions starting at an 8-aligned
  // data section, every tensor then starts at a multiple of its element size.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const size_t size_a = dtype_size(tensors[a].second.dtype), size_b = dtype_size(tensors[b].second.dtype);
    if (size_a != size_b) return size_a > size_b;
    return tensors[a].first < tensors[b].first;
  });

  Json header = Json::object();
  int64_t offset = 0;
  for (size_t i : order) {
    const auto& [name, view] = tensors[i];
    DJINN_CHECK(offset <= std::numeric_limits<int64_t>::max() - nbytes[i],
                "write_safetensors: total size overflows 64 bits");
    header[name] = {{"dtype", std::string(safetensors_dtype_name(view.dtype))},
                    {"shape", view.shape},
                    {"data_offsets", {offset, offset + nbytes[i]}}};
    offset += nbytes[i];
  }
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;

  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const Json::exception& e) {
    DJINN_CHECK(false, "write_safetensors: a tensor name or metadata string is not valid UTF-8: {}",
                e.what());
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // data starts 8-aligned
  unsigned char length_field[kLengthFieldBytes];
  for (size_t i = 0; i < kLengthFieldBytes; ++i)
    length_field[i] = static_cast<unsigned char>(static_cast<uint64_t>(header_text.size()) >> (8 * i));

  const std::filesystem::path temporary = temporary_path_for(path);
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return io_error(errno, "cannot create a temporary file for", path);
  FdCloser closer(fd);
  // Writes everything, then renames; on any failure removes the temporary file.
  const auto write_and_rename = [&]() -> Status {
    if (int error = write_all(fd, length_field, sizeof length_field))
      return io_error(error, "cannot write", temporary);
    if (int error = write_all(fd, header_text.data(), header_text.size()))
      return io_error(error, "cannot write", temporary);
    for (size_t i : order) {
      if (nbytes[i] == 0) continue;
      if (int error = write_all(fd, tensors[i].second.data, static_cast<size_t>(nbytes[i])))
        return io_error(error, "cannot write", temporary);
    }
    if (::fsync(fd) != 0) return io_error(errno, "cannot flush", temporary);
    if (int error = closer.close_now()) return io_error(error, "cannot close", temporary);
    if (::rename(temporary.c_str(), path.c_str()) != 0)
      return io_error(errno, "cannot rename the temporary file to", path);
    return Status::ok_status();
  };
  Status status = write_and_rename();
  if (!status.ok()) ::unlink(temporary.c_str());
  return status;
}

}  // namespace djinn
