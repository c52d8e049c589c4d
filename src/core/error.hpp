// Typed errors. Library code throws these; only `main` turns them into messages and exit codes.
#pragma once

#include <stdexcept>
#include <string>

namespace zerolora {

// Base of every error zerolora throws on bad input or environment.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A file is missing, unreadable or cannot be written.
class IoError : public Error {
 public:
  using Error::Error;
};

// A file's content is malformed (safetensors header, JSON syntax, out-of-range offsets).
class FormatError : public Error {
 public:
  using Error::Error;
};

// A configuration value is missing, of the wrong type or inconsistent.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Well-formed input that zerolora does not support (another architecture, rope type, dtype).
class UnsupportedError : public Error {
 public:
  using Error::Error;
};

// A tensor's shape or dtype does not match what the model needs.
class ShapeError : public Error {
 public:
  using Error::Error;
};

// Wrong command-line usage.
class UsageError : public Error {
 public:
  using Error::Error;
};

// The machine cannot give what the run needs (memory): the message has the arithmetic.
class ResourceError : public Error {
 public:
  using Error::Error;
};

// Training produced NaN or Inf (a diverged run, a damaged input): the message names the step
// and, where it can be known, the layer or tensor.
class NumericalError : public Error {
 public:
  using Error::Error;
};

// A device call failed (CUDA, cuBLAS, cuDNN): the message names the call, the shape and the
// library's own words.
class DeviceError : public Error {
 public:
  using Error::Error;
};

// A broken internal invariant: a bug in zerolora, never the user's fault.
class InternalError : public Error {
 public:
  using Error::Error;
};

}  // namespace zerolora

// Checks an internal invariant (not user input); throws InternalError naming the site.
#define ZL_CHECK(cond)                                                                          \
  do {                                                                                          \
    if (!(cond))                                                                                \
      throw ::zerolora::InternalError(std::string("internal check failed: ") + #cond + " at " + \
                                      __FILE__ + ":" + std::to_string(__LINE__));               \
  } while (0)
