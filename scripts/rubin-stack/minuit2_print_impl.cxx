// MnPrint::Impl for a standalone Minuit2 built from iminuit's sdist.
//
// Minuit2 leaves the output back end of MnPrint to the embedding program
// (ROOT's MnPrintImpl.cxx, iminuit's printimpl.cpp which prints through
// Python). afw only needs the symbol: write Minuit2's messages to stderr.
// Part of meas_madness's scripts/build-rubin-stack.sh; not ROOT code.
#include <iostream>
#include <string>

#include "Minuit2/MnPrint.h"

void ROOT::Minuit2::MnPrint::Impl(ROOT::Minuit2::MnPrint::Verbosity level, const std::string &s) {
    static const char *label[5] = {"E", "W", "I", "D", "T"};
    const int i = static_cast<int>(level);
    std::cerr << "Minuit2 " << ((i >= 0 && i < 5) ? label[i] : "?") << " " << s << std::endl;
}
