package wormtx

import "time"

// Stage is a point on a transaction's fault-free path, reported to a
// Trace hook (CoordinatorConfig.Trace, ParticipantConfig.Trace) with the
// time it was reached: where a transaction's latency goes, stage by stage
// (worm bench tx -stages). The 2PC baseline (twopc) reports the same
// stages, so the two paths read side by side.
type Stage uint8

const (
	// StageBegin: the coordinator's Begin was called.
	StageBegin Stage = iota + 1
	// StagePrepareSent: the coordinator handed every prepare to its
	// Messenger (direct mode) or posted it to every inbox.
	StagePrepareSent
	// StagePrepareStart: a participant starts its part (the prepare
	// reached it).
	StagePrepareStart
	// StagePrepared: the participant's Resource.Prepare returned (its
	// vote recorded durably on its side).
	StagePrepared
	// StageVoted: the participant's vote is written (WormTX: the vote
	// register's write returned; 2PC: the vote message was sent).
	StageVoted
	// StageOutcome: the coordinator (Await) or a participant knows the
	// outcome.
	StageOutcome
	// StageApplied: the participant's Resource.Apply returned.
	StageApplied
)

// Stages lists the stages in path order.
var Stages = []Stage{StageBegin, StagePrepareSent, StagePrepareStart, StagePrepared, StageVoted, StageOutcome, StageApplied}

// String names the stage.
func (s Stage) String() string {
	switch s {
	case StageBegin:
		return "begin"
	case StagePrepareSent:
		return "prepare-sent"
	case StagePrepareStart:
		return "prepare-start"
	case StagePrepared:
		return "prepared"
	case StageVoted:
		return "voted"
	case StageOutcome:
		return "outcome"
	case StageApplied:
		return "applied"
	}
	return "stage?"
}

// TraceFunc receives stages as they are reached. It is called on the
// transaction's own goroutines, so it must be quick and must not block;
// it must not call back into the Coordinator or Participant.
type TraceFunc func(tx TxID, s Stage, at time.Time)

// emit calls f when set.
func (f TraceFunc) emit(tx TxID, s Stage) {
	if f != nil {
		f(tx, s, time.Now())
	}
}
