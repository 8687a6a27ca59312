// The public error model (shmbroker/status.h) and DtypeOf (shmbroker/segment.h).
#include <gtest/gtest.h>

#include <complex>
#include <cstddef>
#include <string>

#include "shmbroker/segment.h"
#include "shmbroker/status.h"

namespace shmbroker {
namespace {

TEST(Status, OkAndErrors) {
  Status ok;
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.code(), Code::kOk);
  EXPECT_EQ(ok.ToString(), "OK");
  EXPECT_EQ(Status::Ok(), ok);
  Status nf = Status::NotFound("no segment named 'x'");
  EXPECT_FALSE(nf.ok());
  EXPECT_EQ(nf.code(), Code::kNotFound);
  EXPECT_EQ(nf.message(), "no segment named 'x'");
  EXPECT_EQ(nf.ToString(), "NOT_FOUND: no segment named 'x'");
  EXPECT_FALSE(nf == Status::NotFound("other"));
  EXPECT_EQ(Status(Code::kInternal, "").ToString(), "INTERNAL");
}

TEST(Status, EveryCodeHasItsWireName) {
  const char* names[] = {"OK",
                         "INVALID_ARGUMENT",
                         "NOT_FOUND",
                         "ALREADY_EXISTS",
                         "PERMISSION_DENIED",
                         "RESOURCE_EXHAUSTED",
                         "FAILED_PRECONDITION",
                         "PROTOCOL_ERROR",
                         "INTERNAL",
                         "UNAVAILABLE",
                         "DEADLINE_EXCEEDED"};
  ASSERT_EQ(std::size(names), static_cast<std::size_t>(kMaxCode) + 1);
  for (int c = 0; c <= kMaxCode; ++c) EXPECT_EQ(CodeName(static_cast<Code>(c)), names[c]);
  EXPECT_EQ(CodeName(static_cast<Code>(kMaxCode + 1)), "UNKNOWN");
}

TEST(Result, ValueOrStatus) {
  Result<std::string> v = std::string("x");
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v.status().ok());
  EXPECT_EQ(*v, "x");
  EXPECT_EQ(v->size(), 1u);
  std::string moved = std::move(v).value();
  EXPECT_EQ(moved, "x");
  Result<int> e = Status::PermissionDenied("no");
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), Code::kPermissionDenied);
}

TEST(Result, AnOkStatusIsNotAValue) {
  // A Result holds a value or an error; an OK status without a value is a bug, reported as one.
  Result<int> r = Status::Ok();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInternal);
}

TEST(ResultDeathTest, ValueOfAnErrorAbortsSayingWhy) {
  Result<int> e = Status::NotFound("no segment named 'gone'");
  EXPECT_DEATH((void)e.value(),
               "value\\(\\) of a failed Result: NOT_FOUND: no segment named 'gone'");
}

TEST(DtypeOf, NativeByteOrderTypeStrings) {
  static_assert(DtypeOf<float>() == "<f4" || DtypeOf<float>() == ">f4");
  if constexpr (std::endian::native == std::endian::little) {
    EXPECT_EQ(DtypeOf<float>(), "<f4");
    EXPECT_EQ(DtypeOf<double>(), "<f8");
    EXPECT_EQ(DtypeOf<std::int16_t>(), "<i2");
    EXPECT_EQ(DtypeOf<std::uint32_t>(), "<u4");
    EXPECT_EQ(DtypeOf<std::int64_t>(), "<i8");
    EXPECT_EQ(DtypeOf<std::complex<float>>(), "<c8");
    EXPECT_EQ(DtypeOf<std::complex<double>>(), "<c16");
  }
  EXPECT_EQ(DtypeOf<bool>(), "|b1");
  EXPECT_EQ(DtypeOf<std::byte>(), "|u1");
  EXPECT_EQ(DtypeOf<std::int8_t>(), "|i1");
  EXPECT_EQ(DtypeOf<std::uint8_t>(), "|u1");
  EXPECT_EQ(DtypeOf<const double>(), DtypeOf<double>());
}

}  // namespace
}  // namespace shmbroker
