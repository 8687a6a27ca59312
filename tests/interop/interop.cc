// The C++ half of the C++ <-> Python test (python-client/tests/test_interop.py).
//
//   shmbroker_interop write NAME DTYPE ORDER DIM...   create NAME and fill it with the pattern
//   shmbroker_interop check NAME                      attach NAME read-only, verify the pattern
//
// The pattern is defined on the element index k in memory order (so the layout metadata, not
// the fill loop, decides what Python sees); interop_pattern() in python-client/tests/sbtest.py
// is its Python twin. Big-endian
// dtypes are stored byte-swapped. Exit status: 0 ok, 1 mismatch, 2 usage or shmbroker error.
#include <shmbroker/client.h>

#include <algorithm>
#include <complex>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

std::uint64_t Mix(std::uint64_t k) { return k * 2654435761ULL + 12345ULL; }

// The bytes of element k of `dtype`, in the dtype's own byte order. False if unsupported.
bool Element(const std::string& dtype, std::uint64_t k, std::vector<unsigned char>& out) {
  if (dtype.size() < 3) return false;
  char order = dtype[0], kind = dtype[1];
  int size = std::stoi(dtype.substr(2));
  out.assign(static_cast<std::size_t>(size), 0);
  auto put = [&](const void* p) { std::memcpy(out.data(), p, out.size()); };
  if (kind == 'b' && size == 1) {
    unsigned char v = k % 3 == 0;
    put(&v);
  } else if ((kind == 'i' || kind == 'u') && (size == 1 || size == 2 || size == 4 || size == 8)) {
    std::uint64_t v = Mix(k);  // truncated to the width; signed types see the same bits
    put(&v);                   // little-endian host: the low bytes come first
  } else if (kind == 'f' && size == 4) {
    float v = static_cast<float>(k) * 0.25f - 3.5f;
    put(&v);
  } else if (kind == 'f' && size == 8) {
    double v = static_cast<double>(k) * 0.25 - 3.5;
    put(&v);
  } else if (kind == 'c' && size == 8) {
    std::complex<float> v(static_cast<float>(k) * 0.5f, -static_cast<float>(k) * 0.25f);
    put(&v);
  } else if (kind == 'c' && size == 16) {
    std::complex<double> v(static_cast<double>(k) * 0.5, -static_cast<double>(k) * 0.25);
    put(&v);
  } else {
    return false;
  }
  if (order == '>') {
    if (kind == 'c') {  // each of the two parts is swapped on its own
      std::reverse(out.begin(), out.begin() + size / 2);
      std::reverse(out.begin() + size / 2, out.end());
    } else {
      std::reverse(out.begin(), out.end());
    }
  }
  return true;
}

int Fail(const shmbroker::Status& s) {
  std::fprintf(stderr, "shmbroker_interop: %s\n", s.ToString().c_str());
  return 2;
}

int Write(shmbroker::Client& client, int argc, char** argv) {
  if (argc < 5) return std::fprintf(stderr, "usage: write NAME DTYPE C|F DIM...\n"), 2;
  shmbroker::CreateOptions o;
  o.name = argv[2];
  o.dtype = argv[3];
  o.order = std::string(argv[4]) == "F" ? shmbroker::Order::kF : shmbroker::Order::kC;
  for (int i = 5; i < argc; ++i) o.shape.push_back(std::stoull(argv[i]));
  o.attrs["writer"] = "c++";
  auto seg = client.Create(o);
  if (!seg.ok()) return Fail(seg.status());
  auto bytes = seg->mutable_bytes();
  if (!bytes.ok()) return Fail(bytes.status());
  std::vector<unsigned char> e;
  std::size_t n = 0;
  for (std::size_t off = 0; off < bytes->size(); off += e.size(), ++n) {
    if (!Element(o.dtype, n, e)) return std::fprintf(stderr, "unsupported dtype\n"), 2;
    std::memcpy(bytes->data() + off, e.data(), e.size());
  }
  std::printf("wrote %zu elements of %s to '%s'\n", n, o.dtype.c_str(), o.name.c_str());
  return 0;
}

int Check(shmbroker::Client& client, int argc, char** argv) {
  if (argc != 3) return std::fprintf(stderr, "usage: check NAME\n"), 2;
  auto seg = client.Attach(argv[2]);
  if (!seg.ok()) return Fail(seg.status());
  if (seg->writable()) return std::fprintf(stderr, "attached read-write?\n"), 2;
  auto bytes = seg->bytes();
  std::vector<unsigned char> e;
  std::size_t n = 0;
  for (std::size_t off = 0; off < bytes.size(); off += e.size(), ++n) {
    if (!Element(seg->dtype(), n, e)) return std::fprintf(stderr, "unsupported dtype\n"), 2;
    if (std::memcmp(bytes.data() + off, e.data(), e.size()) != 0) {
      std::fprintf(stderr, "'%s' (%s): element %zu differs\n", argv[2], seg->dtype().c_str(), n);
      return 1;
    }
  }
  std::printf("'%s': %zu elements of %s, order %s, all as expected\n", argv[2], n,
              seg->dtype().c_str(), seg->order() == shmbroker::Order::kF ? "F" : "C");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return std::fprintf(stderr, "usage: shmbroker_interop write|check ...\n"), 2;
  auto client = shmbroker::Client::Connect({.client_name = "cpp:shmbroker_interop"});
  if (!client.ok()) return Fail(client.status());
  std::string cmd = argv[1];
  if (cmd == "write") return Write(*client, argc, argv);
  if (cmd == "check") return Check(*client, argc, argv);
  std::fprintf(stderr, "unknown command '%s'\n", cmd.c_str());
  return 2;
}
