// zerolora._zerolora: the Python module. Thin on purpose: the Python side
// (python/zerolora/) turns keyword arguments into the command line's flags, so names, defaults
// and checks are the command line's own, and results cross as JSON text. The GIL is released
// while the engine works and taken back only to call the user's functions.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "apps/cli.hpp"
#include "apps/flag_checks.hpp"
#include "apps/hf_args.hpp"
#include "apps/train_flags.hpp"
#include "comm/communicator.hpp"
#include "comm/rank_guard.hpp"
#include "core/error.hpp"
#include "train/training_run.hpp"

namespace nb = nanobind;

namespace zerolora::python {
namespace {

// One per process, kept by the Python package for the process's life: under mpirun it owns
// MPI, which a process can initialise only once.
class ProcessGroup {
 public:
  ProcessGroup() : comm_(make_communicator()) {}
  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }
  Communicator& comm() { return *comm_; }

 private:
  std::unique_ptr<Communicator> comm_;
};

// Rank 0's observer: hands notes and metrics records to Python functions. An exception such a
// function raises (KeyboardInterrupt included) is kept and stops the run after the step.
class PythonObserver : public RunObserver {
 public:
  PythonObserver(nb::object on_note, nb::object on_metrics)
      : on_note_(std::move(on_note)), on_metrics_(std::move(on_metrics)) {}

  void note(const std::string& line) override { call(on_note_, line); }
  void metrics(const nlohmann::ordered_json& record) override { call(on_metrics_, record.dump()); }

  void set_functions(nb::object on_note, nb::object on_metrics) {  // with the GIL
    on_note_ = std::move(on_note);
    on_metrics_ = std::move(on_metrics);
  }

  bool wants_stop() const { return stop_.load() || error_ != nullptr; }
  void request_stop() { stop_.store(true); }

  // With the GIL: a signal that arrived while the engine held the CPU runs its Python handler
  // now (SIGINT's raises KeyboardInterrupt), and is kept as an error of this run.
  bool check_signals() {
    nb::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) keep(nb::python_error());
    return wants_stop();
  }

  bool interrupted() const { return error_ && error_->matches(PyExc_KeyboardInterrupt); }
  // With the GIL: raises what a Python function raised (KeyboardInterrupt too, unless
  // `except_interrupt`), and forgets it either way (its traceback holds frames, which may hold
  // this run).
  void rethrow_error(bool except_interrupt) {
    const std::unique_ptr<nb::python_error> error = std::move(error_);
    if (error && !(except_interrupt && error->matches(PyExc_KeyboardInterrupt)))
      throw nb::python_error(std::move(*error));
  }
  // With the GIL: drops the functions and any error kept, so that nothing the garbage collector
  // cannot see holds Python objects once a call is over.
  void forget() {
    on_note_ = nb::none();
    on_metrics_ = nb::none();
    error_.reset();
  }

 private:
  void call(const nb::object& fn, const std::string& text) {
    if (error_) return;
    nb::gil_scoped_acquire gil;
    if (fn.is_none()) return;
    try {
      nb::object answer = fn(text);
      if (nb::isinstance<nb::bool_>(answer) && nb::cast<bool>(answer)) stop_.store(true);
    } catch (nb::python_error& e) {
      keep(std::move(e));
    }
  }
  void keep(nb::python_error&& error) {
    if (!error_) error_ = std::make_unique<nb::python_error>(std::move(error));
  }

  nb::object on_note_, on_metrics_;
  std::unique_ptr<nb::python_error> error_;
  std::atomic<bool> stop_{false};
};

// A training run set up from `zerolora train` flags, with the training data optionally given
// as JSON Lines text (the Python package's lists and datasets) instead of --train_file.
class PythonRun {
 public:
  PythonRun(ProcessGroup& group, const std::vector<std::string>& args,
            std::optional<std::string> train_records, std::optional<std::string> validation_records,
            const std::string& records_label, nb::object on_note)
      : group_(group), observer_(std::move(on_note), nb::none()) {
    CLI::App app("zerolora");
    CLI::App* cmd = app.add_subcommand("train");
    cli::TrainFlags flags;
    cli::add_train_flags(*cmd, flags);
    if (train_records) cmd->get_option("--train_file")->required(false);
    cli::HfArguments hf = cli::rewrite_hf_arguments(args, *cmd);
    ignored_flags_ = hf.ignored;
    std::vector<std::string> argv = std::move(hf.args);
    argv.insert(argv.begin(), "train");
    cli::parse_function_flags(app, std::move(argv));
    cli::record_explicit_flags(*cmd, flags);
    RunSettings settings = cli::run_settings(flags);
    if (train_records) {
      if (!flags.data.train_file.empty())
        throw UsageError("give the training data once: records or train_file, not both");
      settings.data.train_records = InMemoryRecords{records_label, std::move(*train_records)};
    }
    if (validation_records) {
      if (!flags.data.validation_file.empty())
        throw UsageError("give the validation data once: records or validation_file, not both");
      settings.data.validation_records =
          InMemoryRecords{records_label + " (validation)", std::move(*validation_records)};
    }
    {
      nb::gil_scoped_release release;
      run_guarded(group_.comm(), [&] {
        run_ = std::make_unique<TrainingRun>(group_.comm(), std::move(settings), leader());
        return 0;
      });
    }
    // Ctrl-C while the model and data loaded, or an exception from the notes' function: raised
    // now (nothing was trained, nothing needs saving).
    observer_.set_functions(nb::none(), nb::none());
    if (PyErr_CheckSignals() != 0) {
      observer_.forget();
      throw nb::python_error();
    }
    observer_.rethrow_error(false);
  }

  std::int64_t total_steps() const { return open().total_steps(); }
  std::int64_t first_step() const { return open().first_step(); }
  const std::vector<std::string>& ignored_flags() const { return ignored_flags_; }

  // Trains to the end or until stopped (a callback's True, request_stop, Ctrl-C, a callback's
  // exception), then saves: the adapter and results, or a checkpoint to resume from. Returns
  // {"step", "stopped", "interrupted", "saved"} as JSON; re-raises a callback's exception
  // (not KeyboardInterrupt) once the checkpoint is written.
  std::string train(nb::object on_metrics, nb::object on_note) {
    if (trained_) throw UsageError("this run has already trained; make a new Run to train again");
    if (!run_) throw UsageError("this run was closed");
    trained_ = true;
    observer_.set_functions(std::move(on_note), std::move(on_metrics));
    // Whatever happens (an engine error included), the functions are let go after.
    struct Forget {
      PythonObserver& observer;
      ~Forget() { observer.forget(); }
    } forget{observer_};
    nlohmann::ordered_json answer;
    {
      nb::gil_scoped_release release;
      run_guarded(group_.comm(), [&] {
        const RunOutcome outcome =
            run_->run([this] { return observer_.check_signals(); }, leader());
        answer["step"] = outcome.step;
        answer["stopped"] = outcome.stopped;
        answer["saved"] = run_->save(leader());
        return 0;
      });
    }
    answer["interrupted"] = observer_.interrupted();
    observer_.rethrow_error(true);
    return answer.dump();
  }

  void request_stop() { observer_.request_stop(); }

  // Frees the model and the data now (and lets MPI be finalised at exit): every rank calls it.
  void close() {
    nb::gil_scoped_release release;
    run_.reset();
  }

 private:
  RunObserver* leader() { return group_.rank() == 0 ? &observer_ : nullptr; }
  const TrainingRun& open() const {
    if (!run_) throw UsageError("this run was closed");
    return *run_;
  }

  ProcessGroup& group_;
  PythonObserver observer_;
  std::unique_ptr<TrainingRun> run_;
  std::vector<std::string> ignored_flags_;
  bool trained_ = false;
};

template <class E>
nb::object add_exception(nb::module_& m, const char* name, nb::handle base, const char* doc) {
  nb::exception<E> type(m, name, base);
  type.attr("__doc__") = doc;
  return type;
}

}  // namespace
}  // namespace zerolora::python

NB_MODULE(_zerolora, m) {
  using namespace zerolora;
  using namespace zerolora::python;
  m.doc() = "zerolora's engine (use the zerolora package, not this module)";

  // The library's typed errors, as Python exceptions of the same names: a base class first,
  // then the kinds (nanobind tries the last registered translator first).
  nb::object error =
      add_exception<Error>(m, "Error", PyExc_RuntimeError, "Base of the errors zerolora raises");
  add_exception<IoError>(m, "IoError", error, "A file is missing, unreadable or cannot be written");
  add_exception<FormatError>(m, "FormatError", error, "A file's content is malformed");
  add_exception<ConfigError>(m, "ConfigError", error,
                             "A configuration value is missing, of the wrong type or inconsistent");
  add_exception<UnsupportedError>(m, "UnsupportedError", error,
                                  "Well-formed input that zerolora does not support");
  add_exception<ShapeError>(m, "ShapeError", error,
                            "A tensor's shape or dtype does not match what the model needs");
  add_exception<UsageError>(m, "UsageError", error,
                            "Arguments that zerolora refuses (a flag, a value, a conflict)");
  add_exception<ResourceError>(m, "ResourceError", error,
                               "The machine cannot give what the run needs (memory)");
  add_exception<NumericalError>(m, "NumericalError", error, "Training produced NaN or Inf");
  add_exception<DeviceError>(m, "DeviceError", error, "A device call failed (CUDA, cuBLAS, cuDNN)");
  add_exception<InternalError>(m, "InternalError", error,
                               "A broken internal invariant: a bug in zerolora, please report it");

  nb::class_<ProcessGroup>(m, "ProcessGroup")
      .def(nb::init<>())
      .def_prop_ro("rank", &ProcessGroup::rank)
      .def_prop_ro("size", &ProcessGroup::size);

  nb::class_<PythonRun>(m, "Run")
      .def(nb::init<ProcessGroup&, const std::vector<std::string>&, std::optional<std::string>,
                    std::optional<std::string>, const std::string&, nb::object>(),
           nb::arg("group"), nb::arg("args"), nb::arg("train_records").none(),
           nb::arg("validation_records").none(), nb::arg("records_label"), nb::arg("on_note"),
           nb::keep_alive<1, 2>())
      .def_prop_ro("total_steps", &PythonRun::total_steps)
      .def_prop_ro("first_step", &PythonRun::first_step)
      .def_prop_ro("ignored_flags", &PythonRun::ignored_flags)
      .def("train", &PythonRun::train, nb::arg("on_metrics"), nb::arg("on_note"))
      .def("request_stop", &PythonRun::request_stop)
      .def("close", &PythonRun::close);

  m.def(
      "cli_main",
      [](const std::vector<std::string>& args) {
        nb::gil_scoped_release release;
        return cli::run_cli(args);
      },
      nb::arg("args"), "Runs `zerolora ARGS...`; returns its exit code");
  m.def(
      "run_command",
      [](const std::vector<std::string>& args) {
        nb::gil_scoped_release release;
        cli::run_command(args);
      },
      nb::arg("args"), "Runs `zerolora ARGS...`; raises the library's errors");
  m.def(
      "estimate_memory",
      [](const std::vector<std::string>& args) {
        nb::gil_scoped_release release;
        return cli::estimate_memory_report(args).dump();
      },
      nb::arg("args"));
  m.def(
      "inspect",
      [](const std::string& path) {
        nb::gil_scoped_release release;
        return cli::inspect_report(path).dump();
      },
      nb::arg("path"));
  m.def(
      "generate",
      [](const std::vector<std::string>& args, nb::object on_text) {
        cli::GeneratedText text;
        {
          nb::gil_scoped_release release;
          text = cli::generate_text(args, [&](std::string_view piece, bool is_prompt) {
            nb::gil_scoped_acquire gil;
            if (PyErr_CheckSignals() != 0) throw nb::python_error();  // Ctrl-C ends it
            if (!on_text.is_none() && !is_prompt) on_text(std::string(piece));
          });
        }
        nlohmann::ordered_json answer{{"prompt", text.prompt},
                                      {"completion", text.completion},
                                      {"prompt_tokens", text.prompt_tokens},
                                      {"new_tokens", text.new_tokens},
                                      {"seconds", text.seconds}};
        return answer.dump();
      },
      nb::arg("args"), nb::arg("on_text").none());
}
