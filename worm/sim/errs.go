package sim

import (
	"errors"

	"github.com/wormspace/wormspace/worm"
)

func isErr(err, target error) bool { return err != nil && errors.Is(err, target) }

func asBatch(err error, be **worm.BatchError) bool { return errors.As(err, be) }

func errKind(err error) string {
	for _, k := range []error{worm.ErrEmpty, worm.ErrPreempted, worm.ErrWritten, worm.ErrTrimmed, worm.ErrUnallocated,
		worm.ErrOutOfRange, worm.ErrUnavailable, worm.ErrUnknownOutcome, worm.ErrInvalid} {
		if errors.Is(err, k) {
			return k.Error()
		}
	}
	return err.Error()
}
